"""WikiText-2 perplexity: the log-likelihood of whole articles, in rolling windows.

Data (format `wikitext_pages`): a WikiText token file (wiki.test.tokens of wikitext-2-v1;
pytorch/examples' test.txt in the mirror), cut into articles as lm-eval's
wikitext_document_level builder cuts it: a page starts at each top-level heading line
" = Title = " and holds every line up to the next one, joined with "\\n" as they stand
(blank lines and the leading/trailing spaces of lines kept); pages that are only
whitespace are skipped. The test file gives 62 pages. Rows {id, page}.

Definition: lm-eval's wikitext (loglikelihood_rolling): the scored text is the page after
lm-eval's wikitext detokenizer (below); words are the page's whitespace-split pieces
(re.split on \\s+, empty ends counted, as lm-eval) and bytes its UTF-8 length, both of
the page before detokenizing. Metrics: `word_perplexity` and `byte_perplexity`
(exp(-sum ll / sum words or bytes)), `bits_per_byte`, and `token_perplexity` (per token
of the model's tokenizer; not an lm-eval metric, and not comparable across tokenizers).

Differences from lm-eval's numbers, both stated wherever the score is shown:
- lm-eval reads wikitext-2-raw-v1; the mirror has the tokenized release (wikitext-2-v1),
  where words outside the 33k vocabulary are "<unk>". Same pages and word counts, but
  "<unk>" is scored where the raw text has the rare word.
- windows are capped at MAX_WINDOW = 2,048 tokens (lm-eval uses the model's positions,
  8,192 for SmolLM2): a window's logits are kept at every position, and for SmolLM2's
  vocabulary 8,192 positions are 1.6 GB of float32. lm-eval with `max_length=2048` in
  --model_args scores the same windows.

Sample size: n counts pages (about 4,000 words, 5,000 SmolLM2 tokens each on average).
configs use n: 6 (about 30,000 tokens, a few percent of the file; in the order of a
minute of one CPU thread for a 135M model), so perplexity costs about as much as one
other task of a checkpoint's scoring rather than dominating it; the full 62 pages take
about ten times longer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_lm_eval import bits_per_byte, weighted_perplexity
from editharm.evaluate.tasks._readers import files_under
from editharm.evaluate.tasks.base import RollingItem, RollingOutput, Task

MAX_WINDOW = 2048
_WHITESPACE = re.compile(r"\s+")


def is_title_line(line: str) -> bool:
    """A top-level heading " = Title = " (after lm-eval's collapsing of "= =" runs, which
    makes lower headings start with "==")."""
    collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
    return collapsed.startswith("= ") and collapsed.endswith(" =")


def split_pages(text: str) -> list[str]:
    """The articles of a WikiText token file, as lm-eval's document-level builder forms them."""
    pages, current = [], []
    for line in text.split("\n"):
        if is_title_line(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    page = "\n".join(current)
    if page.strip():  # the builder yields its last page even when blank; an empty text scores nothing
        pages.append(page)
    return pages


@register_format("wikitext_pages")
def wikitext_page_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".txt", ".tokens", ".raw")):
        for k, page in enumerate(split_pages(path.read_text(encoding="utf-8"))):
            yield {"id": f"{path.name}#{k}", "page": page}


# lm-eval's wikitext detokenizer, rule by rule, in its order. (Its digit-contraction rule
# matches a literal "/' 0/" pattern that never occurs in WikiText, so it is left out.)
_PLAIN_BEFORE = [("s '", "s'"), (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                 (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")]
_BRACKET_RULES = [(re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"), (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
                  (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"), (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
                  (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'")]
_PLAIN_AFTER = [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"), (" \n", "\n"),
                ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")]


def detokenize(page: str) -> str:
    for old, new in _PLAIN_BEFORE:
        page = page.replace(old, new)
    for pattern, repl in _BRACKET_RULES:
        page = pattern.sub(repl, page)
    for old, new in _PLAIN_AFTER:
        page = page.replace(old, new)
    return page


def word_count(page: str) -> int:
    return len(_WHITESPACE.split(page))


class WikiText(Task):
    NAME = "wikitext"
    SUITES = ("harm",)
    DATASET = "wikitext2_test"
    KIND = "rolling"
    METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[RollingItem]:
        return [RollingItem(id=r["id"], text=detokenize(r["page"]), max_window=MAX_WINDOW,
                            units={"words": word_count(r["page"]), "bytes": len(r["page"].encode("utf-8"))}) for r in rows]

    def score(self, items: Sequence[RollingItem], outputs: Sequence[RollingOutput]) -> dict[str, float]:
        if len(items) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs for {len(items)} items")
        lls = [o.logprob for o in outputs]
        n_bytes = [i.units["bytes"] for i in items]
        return {"word_perplexity": weighted_perplexity(lls, [i.units["words"] for i in items]),
                "byte_perplexity": weighted_perplexity(lls, n_bytes),
                "bits_per_byte": bits_per_byte(lls, n_bytes),
                "token_perplexity": weighted_perplexity(lls, [o.token_count for o in outputs])}
