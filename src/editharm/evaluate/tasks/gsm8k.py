"""GSM8K: grade-school maths word problems, scored by the final number.

Data (format `gsm8k`): the test split as OpenAI distribute it, JSONL {question, answer}
where the answer's last line is "#### <number>" (github openai/grade-school-math, the
mirror's copy); the hub's openai/gsm8k parquet has the same two columns.

Two tasks share the data and the answer extraction:

- `gsm8k` (gu2024), Gu et al.'s prompt from JasonForJoy/Model-Editing-Hurt
  test-reasoning.py, zero-shot.  Their prompt includes the reference solution's
  reasoning (the text before "####") and asks only for the number:
  "Q: {question} A:Let's think step by step. {reasoning} Therefore, the answer (arabic
  numerals) is:".  That is what the paper measured, so it is kept: the task tests
  whether the model can read off the result, which editing can still break.  Gu et al.
  generated 5 tokens with GPT-2, whose tokens hold several digits; digit-by-digit
  tokenizers (Llama, SmolLM2) need more, so 10 tokens are generated here.  Solved when
  the first number generated equals the reference (Gu et al. tested whether the
  reference string occurs anywhere in the output, which also counts "1" in "18" as
  solved).
- `gsm8k_8shot` (li2024), the 8-shot chain of thought of Wei et al. 2022 (the exemplars
  every harness uses), "Q: ...\nA: ... The answer is N.\n\n" blocks.  `exact_match`
  takes the last number of the generation (OpenCompass's and lm-eval's flexible
  extraction); `strict_match` only accepts "The answer is N".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task

ANSWER_MARK = "#### "


@register_format("gsm8k")
def gsm8k_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    index = 0
    for path in files_under(raw_dir, spec, (".jsonl", ".parquet")):
        for where, record in read_records(path):
            question = get(record, "question", where, str)
            answer = get(record, "answer", where, str)
            if ANSWER_MARK not in answer:
                raise where.fail(f"answer has no {ANSWER_MARK!r} line with the final number")
            reasoning, _, final = answer.rpartition(ANSWER_MARK)
            number = parse_number(final)
            if number is None:
                raise where.fail(f"final answer {final.strip()!r} is not a number")
            yield {"id": f"gsm8k-{index}", "question": question, "reasoning": reasoning, "answer": final.strip()}
            index += 1


# ------------------------------------------------------------------ answer extraction

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> Decimal | None:
    """'1,000' -> 1000, '$18.00' -> 18.00, '7.' -> 7; None when `text` holds no number."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    try:
        return Decimal(match.group().replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None


def first_number(text: str) -> Decimal | None:
    return parse_number(text)


def last_number(text: str) -> Decimal | None:
    matches = _NUMBER.findall(text)
    return parse_number(matches[-1]) if matches else None


_STRICT = re.compile(r"The answer is (-?[0-9.,$]+)")


def strict_answer(text: str) -> Decimal | None:
    """The number in the first "The answer is N" (the exemplars' closing sentence)."""
    match = _STRICT.search(text)
    return parse_number(match.group(1)) if match else None


def same_number(predicted: Decimal | None, reference: str) -> bool:
    gold = parse_number(reference)
    return predicted is not None and gold is not None and predicted == gold


# ------------------------------------------------------------------ Gu et al. (zero-shot)


def gu_prompt(row: dict) -> str:
    return f"Q: {row['question']} A:Let's think step by step. {row['reasoning']} Therefore, the answer (arabic numerals) is:"


class GSM8K(Task):
    NAME = "gsm8k"
    SUITES = ("gu2024",)
    DATASET = "gsm8k"
    KIND = "generation"
    METRICS = ("solve_rate",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        # No stop sequence: Gu et al. generated a fixed number of tokens and read the number from them.
        return [GenerationItem(id=r["id"], prompt=gu_prompt(r), references=r["answer"], stop=(), max_new_tokens=10) for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        solved = [same_number(first_number(out), item.references) for item, out in zip(items, outputs, strict=True)]
        return {"solve_rate": sum(solved) / len(solved) if solved else 0.0}


# ------------------------------------------------------------------ Li et al. (8-shot CoT)

# Wei et al. 2022, "Chain-of-thought prompting elicits reasoning in large language
# models", the GSM8K exemplars (also lm-eval's gsm8k_cot and OpenCompass's 8-shot config).
COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. "
     "So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
     "How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
     "How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)


def cot_prompt(question: str) -> str:
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in COT_EXEMPLARS)
    return f"{shots}Q: {question}\nA:"


class GSM8K8Shot(Task):
    NAME = "gsm8k_8shot"
    SUITES = ("li2024",)
    DATASET = "gsm8k"
    KIND = "generation"
    METRICS = ("exact_match", "strict_match")
    MAX_NEW_TOKENS = 256  # lm-eval's default budget; the exemplars' solutions are under 70 tokens

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        # "Q:" ends the answer (the model would go on with a new exemplar), as in lm-eval's gsm8k_cot.
        return [
            GenerationItem(id=r["id"], prompt=cot_prompt(r["question"]), references=r["answer"],
                           stop=("Q:",), max_new_tokens=self.MAX_NEW_TOKENS)
            for r in rows
        ]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        pairs = list(zip(items, outputs, strict=True))
        n = len(pairs) or 1
        return {
            "exact_match": sum(same_number(last_number(o), i.references) for i, o in pairs) / n,
            "strict_match": sum(same_number(strict_answer(o), i.references) for i, o in pairs) / n,
        }
