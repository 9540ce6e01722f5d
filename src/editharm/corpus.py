"""Text corpora for covariance statistics: raw Wikipedia text -> rows {"id", "title", "text"}.

Formats registered here (spec `format:` in config):

- `wikitext_tokens`: the tokenised WikiText-2/-103 files (wiki.*.tokens; valid.txt /
  test.txt in pytorch/examples).  Articles start at a top-level heading " = Title = ";
  section headings " = = Name = = " become plain lines "Name".  The tokeniser's
  artefacts are undone where that is unambiguous and cheap: " @-@ " -> "-",
  " @,@ " -> ",", " @.@ " -> ".", no space before , . ; : ! ? ) ] % or 's/'re/n't...,
  none after ( [.  Quotes are left spaced (pairing them is guesswork) and "<unk>" is
  kept as is: the model sees the corpus WikiText-trained work reports on.
- `wikipedia_articles`: plain-text article files as WikiExtractor writes them (first
  non-empty line = the title in upper case), either one file per raw entry or a folder
  of them (SHA256SUMS is ignored).  WikiExtractor writes each section heading twice,
  as an upper-case line and as "Section::::Name."; we keep one plain "Name" line and
  drop every upper-case heading line (also those of emptied sections: REFERENCES).

- `wikipedia_parquet`: the Hugging Face `wikimedia/wikipedia` dump shards (parquet,
  columns id, url, title, text), read in row batches (one English shard holds about
  156,000 articles, more than ROME's 100,000 samples); needs pyarrow.  The text is kept
  as the dump has it.

Text layout in all: title in its own field, paragraphs and headings separated by a
blank line, like the Hugging Face `wikipedia` dumps ROME computed its statistics on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from editharm.datasets import register_format
from editharm.io import DataError, iter_jsonl
from editharm.sources import SUMS_NAME

_TITLE = re.compile(r"^ = ([^=].*) = $")
_SECTION = re.compile(r"^ (?:= )+(.*?)(?: =)+ $")
_MARKUP = re.compile(r"^([A-Za-z]+)::::(.*)$")
_DETOKENISE = [
    (re.compile(r" @([-,.])@ "), r"\1"),
    (re.compile(r" ([,.;:!?)\]%])(?= |$)"), r"\1"),
    (re.compile(r"([(\[]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
]


def detokenise(line: str) -> str:
    """Undo WikiText's tokenisation artefacts in one line (see module doc for which)."""
    line = line.strip()
    for pattern, repl in _DETOKENISE:
        line = pattern.sub(repl, line)
    return line


# --------------------------------------------------------------------------- WikiText


def wikitext_articles(path: str | Path) -> Iterator[tuple[str, str]]:
    """(title, text) per article of a tokenised WikiText file."""
    path = Path(path)
    title: str | None = None
    blocks: list[str] = []
    for line in _read_text(path).splitlines():
        if m := _TITLE.match(line):
            if title is not None and blocks:
                yield title, "\n\n".join(blocks)
            title, blocks = detokenise(m.group(1)), []
        elif m := _SECTION.match(line):
            blocks.append(detokenise(m.group(1)))
        elif line.strip():
            if title is None:
                raise DataError(
                    f"{path}: text before the first ' = Title = ' heading; this is not a tokenised WikiText file "
                    "(check the dataset's `format` in config)."
                )
            blocks.append(detokenise(line))
    if title is not None and blocks:
        yield title, "\n\n".join(blocks)


@register_format("wikitext_tokens")
def wikitext_tokens(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for raw_name in spec["files"]:
        for k, (title, text) in enumerate(wikitext_articles(Path(raw_dir) / raw_name)):
            yield {"id": f"{raw_name}#{k}", "title": title, "text": text}


# --------------------------------------------------------------------------- Wikipedia articles


def wikipedia_article(path: str | Path) -> tuple[str, str]:
    """(title, text) of one WikiExtractor plain-text article file."""
    path = Path(path)
    lines = [line.strip() for line in _read_text(path).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: empty article file; remove it from the folder (and from {SUMS_NAME}).")
    title, body = lines[0], lines[1:]
    blocks = []
    for line in body:
        if m := _MARKUP.match(line):
            # "Section::::History." -> "History"; other markers (BULLET::::- x) keep their text.
            text = m.group(2).rstrip(".") if m.group(1) == "Section" else m.group(2).lstrip("- ").strip()
            if text:
                blocks.append(text)
        elif not _is_upper_heading(line):
            blocks.append(line)
    return title, "\n\n".join(blocks)


def _is_upper_heading(line: str) -> bool:
    # WikiExtractor's upper-case heading lines: duplicates of "Section::::" lines, or
    # headings of sections it emptied (SEE ALSO, REFERENCES).  In the mirrored articles
    # no upper-case line is prose, so all of them go.
    return line == line.upper() and line != line.lower()


def _article_files(path: Path) -> list[Path]:
    if path.is_dir():
        # Sorted by relative path, so ids and order do not depend on the file system.
        return sorted(
            (p for p in path.rglob("*") if p.is_file() and p.name != SUMS_NAME and not p.name.startswith(".")),
            key=lambda p: p.relative_to(path).as_posix(),
        )
    return [path]


@register_format("wikipedia_articles")
def wikipedia_articles(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for raw_name in spec["files"]:
        root = Path(raw_dir) / raw_name
        for f in _article_files(root):
            title, text = wikipedia_article(f)
            if text:
                rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
                yield {"id": f"{raw_name}/{rel}" if root.is_dir() else raw_name, "title": title, "text": text}


@register_format("wikipedia_parquet")
def wikipedia_parquet(raw_dir: Path, spec: dict) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # only the hub's dump is parquet; the mirrored corpora are text
        raise DataError("format wikipedia_parquet reads Parquet and needs pyarrow; install it with `pip install pyarrow`.") from e
    for raw_name in spec["files"]:
        path = Path(raw_dir) / raw_name
        table = pq.ParquetFile(path)
        missing = {"id", "title", "text"} - set(table.schema_arrow.names)
        if missing:
            raise DataError(f"{path}: no column(s) {', '.join(sorted(missing))}; expected a wikimedia/wikipedia shard "
                            f"(id, url, title, text), found {', '.join(table.schema_arrow.names)}.")
        for batch in table.iter_batches(batch_size=1024, columns=["id", "title", "text"]):
            for row in batch.to_pylist():
                if row["text"] and row["text"].strip():
                    yield {"id": f"{raw_name}#{row['id']}", "title": row["title"], "text": row["text"]}


# --------------------------------------------------------------------------- prepared corpora


def iter_texts(path: str | Path) -> Iterator[str]:
    """The `text` of each row of a prepared corpus (JSONL), streamed; errors name file and line."""
    for where, row in iter_jsonl(path):
        if not isinstance(row.get("text"), str):
            raise DataError(f"{where}: expected an object with a string field 'text'; re-run the prepare step.")
        yield row["text"]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); check the file's sha256 against config.") from e
