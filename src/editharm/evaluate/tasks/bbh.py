"""BIG-Bench Hard, 3-shot chain of thought with the authors' prompt files.

Data, both from suzgunmirac/BIG-Bench-Hard (the mirror's `bbh` folder is a copy):
- format `bbh`: the 27 task files <task>.json {canary, examples: [{input, target}]},
  rows {id, task, input, target};
- format `bbh_cot_prompts`: cot-prompts/<task>.txt (a canary line, "-----", then the
  task description and three worked "Q: ...\nA: Let's think step by step. ..." examples),
  rows {task, prompt} with the canary header removed.

Prompt, as Suzgun et al.'s evaluation built it: "{prompt file}\n\nQ: {input}\nA: Let's
think step by step."  The model generates until a blank line (the exemplars contain
none) or a new "Q:".  The answer is the text after the first "the answer is" up to the
end of that line, without the final full stop (lm-eval's bbh_cot_fewshot filter), and
must equal the target exactly.  `exact_match` is over all examples; `exact_match_macro`
is the mean of the per-task scores (OpenCompass reports BBH that way).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.tasks._readers import Where, files_under, get, load_json
from editharm.evaluate.tasks.base import GenerationItem, Task

CANARY_END = "-----\n"
# lm-eval's budget for BBH CoT; the longest exemplar solution (geometric_shapes) is 761
# SmolLM2/Llama tokens.  Generation normally ends earlier, at the blank line after the answer.
MAX_NEW_TOKENS = 1024


@register_format("bbh")
def bbh_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".json",)):
        where = Where(path)
        examples = get(load_json(path), "examples", where, list)
        task = path.name[: -len(".json")]
        for i, example in enumerate(examples):
            ex_where = Where(path, index=i)
            yield {"id": f"{task}-{i}", "task": task, "input": get(example, "input", ex_where, str),
                   "target": get(example, "target", ex_where, str)}


@register_format("bbh_cot_prompts")
def bbh_prompt_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".txt",)):
        text = path.read_text(encoding="utf-8")
        _, sep, body = text.partition(CANARY_END)
        if not sep:
            raise Where(path).fail(f"a CoT prompt file starts with a canary line and {CANARY_END.strip()!r}")
        yield {"task": path.name[: -len(".txt")], "prompt": body.strip("\n")}


def prompt(cot_prompt: str, question: str) -> str:
    return f"{cot_prompt}\n\nQ: {question}\nA: Let's think step by step."


_ANSWER = re.compile(r"the answer is (.*)")


def extract_answer(generation: str) -> str | None:
    match = _ANSWER.search(generation)
    if match is None:
        return None
    answer = match.group(1).strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


class BBH(Task):
    NAME = "bbh"
    SUITES = ("li2024",)
    DATASET = "bbh"
    SHOTS_DATASET = "bbh_cot_prompts"
    KIND = "generation"
    METRICS = ("exact_match", "exact_match_macro")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        prompts = {s["task"]: s["prompt"] for s in shots or ()}
        items = []
        for r in rows:
            if r["task"] not in prompts:
                raise ValueError(f"bbh: no CoT prompt for task {r['task']!r}; pass the rows of {self.SHOTS_DATASET!r} as shots")
            items.append(GenerationItem(id=r["id"], prompt=prompt(prompts[r["task"]], r["input"]), references=r["target"],
                                        stop=("\n\n", "\nQ:"), max_new_tokens=MAX_NEW_TOKENS))
        return items

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        per_task: dict[str, list[bool]] = defaultdict(list)
        for item, out in zip(items, outputs, strict=True):
            per_task[item.id.rsplit("-", 1)[0]].append(extract_answer(out) == item.references)
        hits = [h for v in per_task.values() for h in v]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0,
                "exact_match_macro": sum(sum(v) / len(v) for v in per_task.values()) / len(per_task) if per_task else 0.0}
