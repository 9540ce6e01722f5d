"""Check editharm's scoring against lm-evaluation-harness on the same data and prompts.

    .venv/bin/python scripts/check_against_lm_eval.py --model /path/to/model \
        [--mirror ../shared/data] [--lm-eval-python .venv-lmeval/bin/python] [--out results/lm_eval_check]

What is compared (docs/lm_eval_check.md explains the choices and tolerances):

  truthfulqa   MC1 and MC2, lm-eval's own truthfulqa_mc1/mc2 configs (prompt, metric),
               only the data source replaced by a local JSONL of our rows
  mmlu         5-shot, lm-eval's own mmlu template, a few subjects, local test/dev files
  commonsenseqa 7-shot, a task config written here with our prompt layout
  bbh          boolean_expressions, 3-shot CoT, greedy generation with our prompt and
               stop sequences; lm-eval's own bbh answer filter

and the harm suite (`--checks harm`), each with lm-eval's own task YAML via `include:`
and only the data source replaced by a local JSONL of our rows (in the schema the YAML
reads):
  lambada_openai, piqa, arc_easy, arc_challenge, hellaswag, winogrande, toxigen
               per-request log-likelihoods, acc / acc_norm / LAMBADA's perplexity
  wikitext     per-page rolling log-likelihood, word/byte perplexity, bits per byte
               (lm-eval run with max_length=2048, the task's window cap)
  triviaqa     greedy generations and exact match (max_gen_toks 32, as the task)

`--checks li2024 harm` picks the groups (default: both); lm-eval runs once for all of them.
Both sides read the same rows (the mirror through configs/datasets_tasks.yaml, sha256
checked), score the same model in float32 on the CPU, and the script compares per-item
log-likelihoods (or generations) and the metrics.  lm-eval runs in its own virtual
environment (it pins other packages than editharm), as a subprocess.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LL_TOL = 2e-3    # nats, per choice: float32 sums in different orders and batch shapes
MC2_TOL = 1e-3   # MC2 is a smooth function of the log-likelihoods
ROLLING_TOL_PER_TOKEN = 1e-4  # nats per scored token, for a page's summed rolling log-likelihood (docs/lm_eval_check.md)
PPL_REL_TOL = 1e-4  # relative, for perplexities: log(ppl) moves by sum|dLL| / units, far below this
HARM_CHECKS = ("lambada_openai", "piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "wikitext", "triviaqa",
               "toxigen")


# ------------------------------------------------------------------ data


def load_rows(name: str, specs: dict, mirror: Path, raw_root: Path) -> list[dict]:
    from editharm.datasets import get_format
    from editharm.sources import acquire_dataset

    spec = specs[name]
    acquire_dataset(name, spec, mirror, raw_root / name)
    return list(get_format(spec["format"])(raw_root / name, spec))


def write_jsonl(path: Path, docs: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def select(args, specs: dict, mirror: Path, out: Path) -> dict:
    """The rows each check scores, and the shots."""
    raw = out / "raw"
    tqa = load_rows("truthfulqa", specs, mirror, raw)[: args.n_truthfulqa]
    mmlu_test = [r for r in load_rows("mmlu", specs, mirror, raw) if r["subject"] in args.mmlu_subjects]
    mmlu_dev = [r for r in load_rows("mmlu_dev", specs, mirror, raw) if r["subject"] in args.mmlu_subjects]
    mmlu_test = [r for s in args.mmlu_subjects for r in [x for x in mmlu_test if x["subject"] == s][: args.n_mmlu]]
    csqa_shots = load_rows("commonsenseqa_shots", specs, mirror, raw)[:7]
    shot_ids = {s["id"] for s in csqa_shots}
    csqa = [r for r in load_rows("commonsenseqa", specs, mirror, raw) if r["id"] not in shot_ids][: args.n_commonsenseqa]
    bbh = [r for r in load_rows("bbh", specs, mirror, raw) if r["task"] == args.bbh_task][: args.n_bbh]
    bbh_prompts = [p for p in load_rows("bbh_cot_prompts", specs, mirror, raw) if p["task"] == args.bbh_task]
    return {"truthfulqa": (tqa, None), "mmlu": (mmlu_test, mmlu_dev), "commonsenseqa": (csqa, csqa_shots),
            "bbh": (bbh, bbh_prompts)}


# ------------------------------------------------------------------ lm-eval task configs


def lm_eval_tasks_dir(python: str) -> Path:
    code = "import lm_eval, os; print(os.path.join(os.path.dirname(lm_eval.__file__), 'tasks'))"
    return Path(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip())


def dump_task_config(task_dir: Path, name: str, config: dict) -> str:
    """Write lm-eval task `name` as task_dir/<name>.yaml; returns the name."""
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name


def write_truthfulqa_configs(rows: list[dict], lm_tasks: Path, task_dir: Path) -> list[str]:
    """lm-eval's own truthfulqa_mc1/mc2 configs, data from a local file of our rows in the hub's schema."""
    tqa_file = write_jsonl(task_dir / "data" / "truthfulqa.jsonl", [
        {"question": r["question"], "mc1_targets": r["mc1"], "mc2_targets": r["mc2"]} for r in rows])
    return [dump_task_config(task_dir, f"editharm_truthfulqa_{mc}", {
        "include": str(lm_tasks / "truthfulqa" / f"truthfulqa_{mc}.yaml"), "task": f"editharm_truthfulqa_{mc}",
        "tag": [], "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": tqa_file}}, "validation_split": "validation"})
        for mc in ("mc1", "mc2")]


def truthfulqa_positions(mc: str):
    """compare_choices' `positions` for TruthfulQA: our one item per question holds both answer lists; match by text."""
    return lambda item, sample: [item.choices.index(" " + t) for t in sample["doc"][f"{mc}_targets"]["choices"]]


def write_mmlu_configs(test_rows: list[dict], dev_rows: list[dict], subjects: list[str], lm_tasks: Path,
                       task_dir: Path) -> list[str]:
    """lm-eval's MMLU template, one task per subject (shots: the subject's dev rows), local test and dev files."""
    names = []
    for subject in subjects:
        fields = ("question", "subject", "choices", "answer")
        test_file = write_jsonl(task_dir / "data" / f"mmlu_{subject}_test.jsonl",
                                [{k: r[k] for k in fields} for r in test_rows if r["subject"] == subject])
        dev_file = write_jsonl(task_dir / "data" / f"mmlu_{subject}_dev.jsonl",
                               [{k: r[k] for k in fields} for r in dev_rows if r["subject"] == subject])
        names.append(dump_task_config(task_dir, f"editharm_mmlu_{subject}", {
            "include": str(lm_tasks / "mmlu" / "default" / "_default_template_yaml"), "task": f"editharm_mmlu_{subject}",
            "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": test_file, "dev": dev_file}},
            "description": f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
            "num_fewshot": 5}))
    return names


def write_lm_eval_configs(data: dict, lm_tasks: Path, task_dir: Path, args) -> list[str]:
    """Task YAMLs for lm-eval; returns the task names."""
    names = write_truthfulqa_configs(data["truthfulqa"][0], lm_tasks, task_dir)
    names += write_mmlu_configs(*data["mmlu"], args.mmlu_subjects, lm_tasks, task_dir)

    def dump(name: str, config: dict) -> None:
        names.append(dump_task_config(task_dir, name, config))

    # CommonsenseQA: our layout written as an lm-eval task; the shots are its training split.
    csqa_rows, csqa_shots = data["commonsenseqa"]
    doc = lambda r: {"id": r["id"], "question": r["question"], "choices": r["choices"], "answer": r["answer"]}  # noqa: E731
    dump("editharm_commonsenseqa", {
        "task": "editharm_commonsenseqa", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": write_jsonl(task_dir / "data" / "csqa_shots.jsonl", [doc(r) for r in csqa_shots]),
                                          "test": write_jsonl(task_dir / "data" / "csqa_test.jsonl", [doc(r) for r in csqa_rows])}},
        "training_split": "train", "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nE. {{choices[4]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D", "E"], "doc_to_target": "answer",
        "fewshot_config": {"sampler": "first_n"}, "num_fewshot": 7,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]})

    # BBH: our prompt (prompt file + question) as the document; lm-eval's answer filter.
    from editharm.evaluate.tasks.bbh import MAX_NEW_TOKENS, prompt as bbh_prompt

    bbh_rows, bbh_prompts = data["bbh"]
    cot = bbh_prompts[0]["prompt"]
    dump("editharm_bbh", {
        "task": "editharm_bbh", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": write_jsonl(task_dir / "data" / "bbh.jsonl",
                                                              [{"prompt": bbh_prompt(cot, r["input"]), "target": r["target"]} for r in bbh_rows])}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{target}}",
        "target_delimiter": "", "num_fewshot": 0,
        "generation_kwargs": {"until": ["\n\n", "\nQ:"], "max_gen_toks": MAX_NEW_TOKENS, "do_sample": False, "temperature": 0.0},
        "filter_list": [{"name": "get-answer", "filter": [{"function": "regex", "regex_pattern": "(?<=the answer is )(.*)(?=.)"},
                                                          {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]})
    return names


def lm_eval_env(threads: int) -> dict[str, str]:
    """The environment lm-eval runs in: offline (local files only) and `threads` CPU threads."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_lm_eval(python: str, model: str, task_dir: Path, tasks: list[str], out_dir: Path, batch_size: int, threads: int,
                max_length: int | None = None) -> float:
    env = lm_eval_env(threads)
    lm_eval_bin = str(Path(python).with_name("lm_eval"))
    model_args = f"pretrained={model},dtype=float32" + (f",max_length={max_length}" if max_length else "")
    cmd = [lm_eval_bin, "run", "--model", "hf", "--model_args", model_args,
           "--device", "cpu", "--batch_size", str(batch_size), "--include_path", str(task_dir),
           "--tasks", ",".join(tasks), "--log_samples", "--output_path", str(out_dir)]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - start
    (out_dir / "wall_seconds.json").write_text(json.dumps({"seconds": seconds, "command": cmd}), encoding="utf-8")
    return seconds


def latest_lm_eval_run(out_dir: Path) -> tuple[Path, str]:
    """The newest results file under out_dir (lm-eval writes <model>/results_<timestamp>.json) and its timestamp.

    Results and samples are then read from that one run only, never mixed across runs or
    models that share the output folder.
    """
    results_files = glob.glob(str(out_dir / "**" / "results_*.json"), recursive=True)
    if not results_files:
        raise FileNotFoundError(f"no lm-eval results under {out_dir}: run without --reuse-lm-eval first")
    latest = Path(max(results_files, key=os.path.getmtime))
    return latest, latest.name[len("results_"):-len(".json")]


def read_lm_eval(out_dir: Path, task: str) -> tuple[dict, list[dict]]:
    results_file, stamp = latest_lm_eval_run(out_dir)
    results = json.loads(results_file.read_text())["results"][task]
    sample_file = results_file.parent / f"samples_{task}_{stamp}.jsonl"
    samples = [json.loads(line) for line in sample_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


def request_args(sample: dict) -> list[tuple]:
    """The request arguments lm-eval logged for a document: (context, continuation) per choice, or (prompt, kwargs)."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": .., "arg_1": ..}, ...}
        ordered = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))]
        return [tuple(a[k] for k in sorted(a, key=lambda k: int(k.rsplit("_", 1)[1]))) for a in ordered]
    return [tuple(a) for a in args]


# ------------------------------------------------------------------ our side


def run_ours(model, tokenizer, data: dict, args) -> dict:
    from editharm.evaluate.engine import generate, score_choices
    from editharm.evaluate.tasks import get_task

    ours = {}
    for name, (rows, shots) in data.items():
        task = get_task(name)
        items = task.items(rows, shots)
        start = time.perf_counter()
        if task.KIND == "choice":
            outputs = score_choices(model, tokenizer, items, batch_size=args.batch_size, progress=False)
        else:
            outputs = generate(model, tokenizer, items, batch_size=args.batch_size, progress=False)
        ours[name] = {"items": items, "outputs": outputs, "metrics": task.score(items, outputs),
                      "seconds": time.perf_counter() - start}
    return ours


# ------------------------------------------------------------------ comparison


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index on ties, as numpy


def near_tie(values: list[float]) -> bool:
    top = sorted(values, reverse=True)
    return len(top) > 1 and top[0] - top[1] < 2 * LL_TOL


def compare_choices(items, outputs, samples, positions) -> dict:
    """Per-choice |ours - lm-eval| log-likelihood, argmax disagreements, near-ties, prompt mismatches.

    `positions(item, sample)` gives the positions in our item's choices of lm-eval's
    choices for that document, in lm-eval's order.  A prompt mismatch is a document whose
    context or continuation strings (as lm-eval logged its requests) differ from ours:
    then the two sides did not score the same text, and agreeing numbers would mean nothing.
    """
    max_diff, flips, ties, mismatched = 0.0, 0, 0, []
    per_item = []
    for item, out, sample in zip(items, outputs, samples, strict=True):
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        pos = positions(item, sample)
        mine = [out.logprobs[p] for p in pos]
        requests = request_args(sample)
        if len(requests) != len(pos) or any(ctx != item.context or cont != item.choices[p]
                                            for (ctx, cont, *_), p in zip(requests, pos)):
            mismatched.append(item.id)
        diff = max(abs(a - b) for a, b in zip(mine, theirs, strict=True))
        max_diff = max(max_diff, diff)
        flips += argmax(mine) != argmax(theirs)
        ties += near_tie(theirs)
        per_item.append({"id": item.id, "max_abs_loglik_diff": diff, "editharm": mine, "lm_eval": theirs})
    return {"max_abs_loglik_diff": max_diff, "argmax_disagreements": flips, "near_ties": ties, "n": len(items),
            "prompt_mismatches": len(mismatched), "mismatched_ids": mismatched[:10], "per_item": per_item}


def check_truthfulqa(o: dict, lm_out: Path, add) -> None:
    """TruthfulQA's MC1 and MC2 rows: our run `o` against lm-eval's results under lm_out."""
    for mc in ("mc1", "mc2"):
        res, samples = read_lm_eval(lm_out, f"editharm_truthfulqa_{mc}")
        detail = compare_choices(o["items"], o["outputs"], samples, truthfulqa_positions(mc))
        tol = detail["near_ties"] / detail["n"] if mc == "mc1" else MC2_TOL
        add("truthfulqa", mc, o["metrics"][mc], res["acc,none"], tol, detail)


def check_mmlu(o: dict, lm_out: Path, subjects: list[str], add) -> None:
    """MMLU's accuracy row over all subjects (lm-eval ran one task per subject; its accuracy weighted by items)."""
    correct = 0.0
    mmlu_detail = {"max_abs_loglik_diff": 0.0, "argmax_disagreements": 0, "near_ties": 0, "n": 0, "prompt_mismatches": 0,
                   "mismatched_ids": [], "per_item": []}
    for subject in subjects:
        res, samples = read_lm_eval(lm_out, f"editharm_mmlu_{subject}")
        idx = [i for i, it in enumerate(o["items"]) if it.id.startswith(subject + "/")]
        d = compare_choices([o["items"][i] for i in idx], [o["outputs"][i] for i in idx], samples, lambda item, sample: [0, 1, 2, 3])
        mmlu_detail["max_abs_loglik_diff"] = max(mmlu_detail["max_abs_loglik_diff"], d["max_abs_loglik_diff"])
        for k in ("argmax_disagreements", "near_ties", "n", "prompt_mismatches", "mismatched_ids", "per_item"):
            mmlu_detail[k] += d[k]
        correct += res["acc,none"] * d["n"]
    add("mmlu", "accuracy", o["metrics"]["accuracy"], correct / mmlu_detail["n"], mmlu_detail["near_ties"] / mmlu_detail["n"], mmlu_detail)


def check_li2024(ours: dict, out: Path, args, add) -> None:
    """The rows of the li2024 checks (TruthfulQA, MMLU, CommonsenseQA, BBH)."""
    check_truthfulqa(ours["truthfulqa"], out / "lm_eval_output", add)
    check_mmlu(ours["mmlu"], out / "lm_eval_output", args.mmlu_subjects, add)

    o = ours["commonsenseqa"]
    res, samples = read_lm_eval(out / "lm_eval_output", "editharm_commonsenseqa")
    d = compare_choices(o["items"], o["outputs"], samples, lambda item, sample: [0, 1, 2, 3, 4])
    add("commonsenseqa", "accuracy", o["metrics"]["accuracy"], res["acc,none"], d["near_ties"] / d["n"], d)

    # BBH: the generations themselves, then the answers each side extracts from them.
    from editharm.evaluate.tasks.bbh import extract_answer

    o = ours["bbh"]
    res, samples = read_lm_eval(out / "lm_eval_output", "editharm_bbh")
    theirs_text = [s["resps"][0][0] for s in samples]
    differing = sum(a != b for a, b in zip(o["outputs"], theirs_text, strict=True))
    # same generation but a different extracted answer: a difference of answer extraction, not of the engine
    # (no answer found: None for us, lm-eval's regex filter falls back to "[invalid]"; both count as wrong)
    same_text_other_answer = sum(a == b and (extract_answer(a) or "[invalid]") != s["filtered_resps"][0]
                                 for a, b, s in zip(o["outputs"], theirs_text, samples, strict=True))
    mismatched = [it.id for it, s in zip(o["items"], samples, strict=True) if request_args(s)[0][0] != it.prompt]
    add("bbh/" + args.bbh_task, "exact_match", o["metrics"]["exact_match"], res["exact_match,get-answer"],
        differing / len(samples), {
            "differing_generations": differing, "same_generation_other_answer": same_text_other_answer, "n": len(samples),
            "prompt_mismatches": len(mismatched), "mismatched_ids": mismatched[:10],
            "per_item": [{"id": it.id, "target": it.references, "editharm": a, "lm_eval": b, "editharm_answer": extract_answer(a),
                          "lm_eval_answer": s["filtered_resps"][0]}
                         for it, a, b, s in zip(o["items"], o["outputs"], theirs_text, samples, strict=True)]})


# ------------------------------------------------------------------ the harm suite


def select_harm(args, specs: dict, mirror: Path, out: Path) -> dict:
    """The first n rows of each harm task's prepared data (pages for wikitext)."""
    from editharm.evaluate.tasks import get_task

    data = {}
    for name in HARM_CHECKS:
        rows = load_rows(get_task(name).DATASET, specs, mirror, out / "raw")
        if name == "wikitext":
            data[name] = ([rows[k] for k in args.wikitext_pages], None)
        else:
            data[name] = (rows[: args.n_triviaqa_gen if name == "triviaqa" else args.n_harm], None)
    return data


def _harm_doc(name: str, r: dict) -> dict:
    """A row in the schema of lm-eval's own YAML for the task (the hub dataset's fields)."""
    if name == "lambada_openai":
        return {"text": r["text"]}
    if name == "piqa":
        return {"goal": r["goal"], "sol1": r["solutions"][0], "sol2": r["solutions"][1], "label": r["label"]}
    if name in ("arc_easy", "arc_challenge"):
        labels = [chr(ord("A") + k) for k in range(len(r["choices"]))]
        return {"id": r["id"], "question": r["question"], "choices": {"text": r["choices"], "label": labels},
                "answerKey": labels[r["gold"]]}
    if name == "hellaswag":
        # lm-eval rebuilds the query as preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize());
        # our query already is that text, so it goes in as ctx_a with an empty ctx_b
        activity, _, ctx = r["query"].partition(": ")
        return {"activity_label": activity, "ctx_a": ctx, "ctx_b": "", "endings": r["endings"], "label": str(r["label"])}
    if name == "winogrande":
        return {"sentence": r["sentence"], "option1": r["options"][0], "option2": r["options"][1],
                "answer": str(r["label"] + 1)}
    if name == "wikitext":
        return {"page": r["page"]}
    if name == "triviaqa":
        return {"question": r["question"], "answer": {"aliases": r["answers"]}}
    if name == "toxigen":
        return {"text": r["text"], "toxicity_ai": r["toxicity_ai"], "toxicity_human": r["toxicity_human"]}
    raise ValueError(name)


HARM_YAML = {  # task -> (lm-eval YAML, the split our local file stands in for)
    "lambada_openai": ("lambada/lambada_openai.yaml", "test"), "piqa": ("piqa/piqa.yaml", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "test"), "arc_challenge": ("arc/arc_easy.yaml", "test"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"), "winogrande": ("winogrande/default.yaml", "validation"),
    "wikitext": ("wikitext/wikitext.yaml", "test"), "triviaqa": ("triviaqa/default.yaml", "validation"),
    "toxigen": ("toxigen/toxigen.yaml", "test"),
}


def write_harm_configs(data: dict, lm_tasks: Path, task_dir: Path) -> list[str]:
    from editharm.evaluate.tasks.triviaqa import TriviaQA

    names = []
    for name, (rows, _) in data.items():
        path, split = HARM_YAML[name]
        docs = write_jsonl(task_dir / "data" / f"{name}.jsonl", [_harm_doc(name, r) for r in rows])
        config = {"include": str(lm_tasks / path), "task": f"editharm_{name}", "tag": [], "dataset_path": "json",
                  "dataset_name": None, "dataset_kwargs": {"data_files": {split: docs}},
                  "training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None}
        config[f"{split}_split"] = split
        if name == "triviaqa":  # the task's token limit (lm-eval: 256), so generations can be compared
            item = TriviaQA().items(rows[:1])[0]
            config["generation_kwargs"] = {"until": list(item.stop), "do_sample": False, "temperature": 0.0,
                                           "max_gen_toks": item.max_new_tokens}
        names.append(dump_task_config(task_dir, f"editharm_{name}", config))
    return names


def choice_requests(name: str, items, outputs) -> list[list[tuple]]:
    """Per lm-eval document, the (context, continuation, log-likelihood) of each choice we scored."""
    requests = [[(i.context, c, lp) for c, lp in zip(i.choices, o.logprobs)] for i, o in zip(items, outputs)]
    if name == "winogrande":  # two one-choice items per sentence, one per option
        requests = [requests[k] + requests[k + 1] for k in range(0, len(requests), 2)]
    return requests


def run_ours_harm(model, tokenizer, data: dict, args) -> dict:
    """Our engine on the harm rows: per document, the (context, continuation, log-likelihood) requests."""
    from editharm.evaluate.engine import generate, score_choices, score_rolling
    from editharm.evaluate.tasks import get_task

    ours = {}
    for name, (rows, _) in data.items():
        task = get_task(name)
        items = task.items(rows)
        start = time.perf_counter()
        if task.KIND == "choice":
            outputs = score_choices(model, tokenizer, items, batch_size=args.batch_size, progress=False)
            requests = choice_requests(name, items, outputs)
        elif task.KIND == "rolling":
            outputs = score_rolling(model, tokenizer, items, batch_size=args.batch_size, progress=False)
            requests = [[("", i.text, o.logprob)] for i, o in zip(items, outputs)]
        else:
            outputs = generate(model, tokenizer, items, batch_size=args.batch_size, progress=False)
            requests = [[(i.prompt, None, None)] for i in items]
        ours[name] = {"items": items, "outputs": outputs, "requests": requests, "metrics": task.score(items, outputs),
                      "seconds": time.perf_counter() - start}
    return ours


def _their_lls(sample: dict) -> list[float]:
    return [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in sample["filtered_resps"]]


def compare_requests(docs: list[list[tuple]], samples: list[dict], rolling: bool = False) -> dict:
    """Per document: the strings both sides scored, per-request |dLL|, argmax and acc_norm disagreements, near ties.

    For rolling pages the log-likelihood gap is also given per token (`tokens` from our
    side), the scale its tolerance is set on.
    """
    max_diff, flips, flips_norm, ties, ties_norm, mismatched, per_item = 0.0, 0, 0, 0, 0, [], []
    for k, (mine, sample) in enumerate(zip(docs, samples, strict=True)):
        theirs = _their_lls(sample)
        requests = request_args(sample)
        if rolling:
            same = len(requests) == 1 and requests[0][0] == mine[0][1]
        else:
            same = len(requests) == len(mine) and all(r[0] == c and r[1] == t for r, (c, t, _) in zip(requests, mine))
        if not same:
            mismatched.append(k)
        lls = [lp for _, _, lp in mine]
        diff = max(abs(a - b) for a, b in zip(lls, theirs, strict=True))
        max_diff = max(max_diff, diff)
        if len(lls) > 1:
            flips += argmax(lls) != argmax(theirs)
            ties += near_tie(theirs)
            lengths = [len(t.removeprefix(" ")) for _, t, _ in mine]
            norm_mine, norm_theirs = [a / n for a, n in zip(lls, lengths)], [b / n for b, n in zip(theirs, lengths)]
            flips_norm += argmax(norm_mine) != argmax(norm_theirs)
            top = sorted(norm_theirs, reverse=True)
            ties_norm += top[0] - top[1] < 2 * LL_TOL / min(lengths)
        per_item.append({"doc": k, "max_abs_loglik_diff": diff, "editharm": lls, "lm_eval": theirs})
    return {"max_abs_loglik_diff": max_diff, "argmax_disagreements": flips, "argmax_norm_disagreements": flips_norm,
            "near_ties": ties, "near_ties_norm": ties_norm, "n": len(docs), "prompt_mismatches": len(mismatched),
            "mismatched_docs": mismatched[:10], "per_item": per_item}


def compare_harm(ours: dict, out_dir: Path, add) -> None:
    """One row per metric of every harm task (add(task, metric, mine, theirs, tol, detail, ll_tol))."""
    for name, o in ours.items():
        res, samples = read_lm_eval(out_dir, f"editharm_{name}")
        m = o["metrics"]
        if name == "triviaqa":
            theirs_text = [s["resps"][0][0] for s in samples]
            differing = sum(a != b for a, b in zip(o["outputs"], theirs_text, strict=True))
            mismatched = [i.id for i, s in zip(o["items"], samples, strict=True) if request_args(s)[0][0] != i.prompt]
            add(name, "exact_match", m["exact_match"], res["exact_match,remove_whitespace"], differing / len(samples), {
                "differing_generations": differing, "n": len(samples), "prompt_mismatches": len(mismatched),
                "mismatched_ids": mismatched[:10],
                "per_item": [{"id": i.id, "editharm": a, "lm_eval": b} for i, a, b in zip(o["items"], o["outputs"], theirs_text)]})
            continue
        if name == "wikitext":
            d = compare_requests(o["requests"], samples, rolling=True)
            tokens = [out.token_count for out in o["outputs"]]
            per_token = max(item["max_abs_loglik_diff"] / n for item, n in zip(d["per_item"], tokens))
            d = {**d, "max_abs_loglik_diff_per_token": per_token, "tokens": sum(tokens)}
            d["rolling_ok"] = per_token <= ROLLING_TOL_PER_TOKEN
            for metric in ("word_perplexity", "byte_perplexity"):
                add(name, metric, m[metric], res[f"{metric},none"], PPL_REL_TOL * res[f"{metric},none"], d)
            add(name, "bits_per_byte", m["bits_per_byte"], res["bits_per_byte,none"], PPL_REL_TOL, d)
            continue
        d = compare_requests(o["requests"], samples)
        if name == "lambada_openai":
            mine_greedy = [out.is_greedy[0] for out in o["outputs"]]
            # lm-eval logs each response as strings: [["-5.03", "False"]]
            theirs_greedy = [str(s["filtered_resps"][0][1]) == "True" for s in samples]
            d["greedy_disagreements"] = sum(a != b for a, b in zip(mine_greedy, theirs_greedy))
            add(name, "accuracy", m["accuracy"], res["acc,none"], d["greedy_disagreements"] / d["n"], d)
            add(name, "perplexity", m["perplexity"], res["perplexity,none"], PPL_REL_TOL * res["perplexity,none"], d)
            continue
        add(name, "accuracy", m["accuracy"], res["acc,none"], d["near_ties"] / d["n"], d)
        if "accuracy_norm" in m:
            add(name, "accuracy_norm", m["accuracy_norm"], res["acc_norm,none"], d["near_ties_norm"] / d["n"], d)


def comparison_row(task: str, metric: str, mine: float, theirs: float, tol: float, detail: dict) -> dict:
    """One metric of one task on both sides, with `ok`.

    ok: the metric within its tolerance, every per-choice log-likelihood within LL_TOL (a
    rolling page's within ROLLING_TOL_PER_TOKEN per token), and both sides scored the same
    prompt strings.
    """
    ll_ok = detail["rolling_ok"] if "rolling_ok" in detail else detail.get("max_abs_loglik_diff", 0.0) <= LL_TOL
    ok = abs(mine - theirs) <= tol + 1e-12 and ll_ok and detail.get("prompt_mismatches", 0) == 0
    return {"task": task, "metric": metric, "editharm": mine, "lm_eval": theirs, "abs_diff": abs(mine - theirs),
            "tolerance": tol, "ok": ok, **detail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local model folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--datasets", default=str(REPO / "configs" / "datasets_tasks.yaml"))
    parser.add_argument("--lm-eval-python", default=str(REPO / ".venv-lmeval" / "bin" / "python"))
    parser.add_argument("--out", default=str(REPO / "results" / "lm_eval_check"))
    parser.add_argument("--n-truthfulqa", type=int, default=50)
    parser.add_argument("--mmlu-subjects", nargs="+", default=["high_school_geography", "marketing", "college_biology"])
    parser.add_argument("--n-mmlu", type=int, default=15, help="questions per subject")
    parser.add_argument("--n-commonsenseqa", type=int, default=50)
    parser.add_argument("--bbh-task", default="boolean_expressions")
    parser.add_argument("--n-bbh", type=int, default=15)
    parser.add_argument("--checks", nargs="+", choices=["li2024", "harm"], default=["li2024", "harm"])
    parser.add_argument("--n-harm", type=int, default=50, help="items per harm-suite task (WinoGrande: sentences)")
    parser.add_argument("--wikitext-pages", type=int, nargs="+", default=[0, 2],
                        help="WikiText test pages (0-based); page 2 has 2,992 SmolLM2 tokens, two 2,048-token windows")
    parser.add_argument("--n-triviaqa-gen", type=int, default=20, help="TriviaQA questions (generation)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on each side (default 1: on a shared CPU, 2 threads ran generation ~15x slower)")
    parser.add_argument("--reuse-lm-eval", action="store_true",
                        help="compare with the lm-eval results already in --out instead of running lm-eval again")
    args = parser.parse_args()

    import torch

    from editharm.models import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    specs = yaml.safe_load(Path(args.datasets).read_text())["datasets"]
    data = select(args, specs, Path(args.mirror), out) if "li2024" in args.checks else {}
    harm = select_harm(args, specs, Path(args.mirror), out) if "harm" in args.checks else {}

    from editharm.evaluate.tasks.wikitext import MAX_WINDOW

    lm_tasks = lm_eval_tasks_dir(args.lm_eval_python)
    task_names = write_lm_eval_configs(data, lm_tasks, out / "lm_eval_tasks", args) if data else []
    task_names += write_harm_configs(harm, lm_tasks, out / "lm_eval_tasks") if harm else []
    if args.reuse_lm_eval:
        wall = out / "lm_eval_output" / "wall_seconds.json"
        lm_seconds = json.loads(wall.read_text())["seconds"] if wall.exists() else float("nan")
    else:
        lm_seconds = run_lm_eval(args.lm_eval_python, args.model, out / "lm_eval_tasks", task_names, out / "lm_eval_output",
                                 args.batch_size, args.threads, max_length=MAX_WINDOW if harm else None)

    model, tokenizer = load_model(args.model, device="cpu")
    ours = run_ours(model, tokenizer, data, args) if data else {}
    ours_harm = run_ours_harm(model, tokenizer, harm, args) if harm else {}

    rows = []

    def add(task: str, metric: str, mine: float, theirs: float, tol: float, detail: dict) -> None:
        rows.append(comparison_row(task, metric, mine, theirs, tol, detail))

    if data:
        check_li2024(ours, out, args, add)
    if harm:
        compare_harm(ours_harm, out / "lm_eval_output", add)

    ours = {**ours, **ours_harm}
    report = {"model": args.model, "ll_tolerance": LL_TOL, "mc2_tolerance": MC2_TOL,
              "rolling_tolerance_per_token": ROLLING_TOL_PER_TOKEN, "perplexity_rel_tolerance": PPL_REL_TOL, "rows": rows,
              "lm_eval_seconds": lm_seconds, "editharm_seconds": {k: v["seconds"] for k, v in ours.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"\n{'task':28} {'metric':12} {'editharm':>9} {'lm-eval':>9} {'|diff|':>8} {'tol':>8}  max|dLL|  flips  ties  n    "
          f"prompt!=  ok")
    for r in rows:
        dll = r.get("max_abs_loglik_diff")
        print(f"{r['task']:28} {r['metric']:12} {r['editharm']:9.4f} {r['lm_eval']:9.4f} {r['abs_diff']:8.4f} {r['tolerance']:8.4f}  "
              f"{'-' if dll is None else f'{dll:.1e}':>8}  {r.get('argmax_disagreements', r.get('differing_generations')):>5}  "
              f"{r.get('near_ties', '-'):>4}  {r['n']:<4} {r['prompt_mismatches']:>8}  {r['ok']}")
    print("(flips: argmax disagreements; for bbh, differing generations)")
    for r in rows:
        if r.get("same_generation_other_answer"):
            print(f"bbh: {r['same_generation_other_answer']} identical generation(s) with different extracted answers")
    print(f"\nlm-eval wall time {lm_seconds:.0f} s; editharm " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in ours.items()))
    ok = all(r["ok"] for r in rows) and all(r["prompt_mismatches"] == 0 for r in rows)
    print("AGREE" if ok else "DISAGREE", f"(report: {out / 'report.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
