"""editharm's scoring engine against lm-evaluation-harness 0.4.x (HF backend): docs/s on the same items.

Same model, machine, thread count and items on both sides. Each task's rows are sampled
as the workflow samples them (benchmarks/bench_scoring.py: acquired from the mirror,
prepared, `random.Random(seed).sample`); lm-eval reads those very rows through its own
task YAMLs with only the data source replaced by local files (scripts/check_against_lm_eval.py
writes them). editharm scores in this process; lm-eval runs in its own virtual
environment, in one long-lived driver process (this file run by lm-eval's python with
--lm-eval-driver) that loads the HF model once and loads each task's documents once.

The engines alternate - editharm, lm-eval, editharm, lm-eval, ... for --rounds rounds per
task - so drift of a shared machine falls on both. Each engine is timed inside its own
process around its scoring call only (wall and CPU seconds of that process, all threads):
  editharm  task.items + engine.score_choices + task.score (what run_task does)
  lm-eval   lm_eval.evaluator.evaluate on tasks already loaded: requests and few-shot
            contexts, the HF model calls, filters, metrics (bootstrap stderr off; samples
            logged, simple_evaluate's default, for the item-level comparison)
Model loading, dataset acquisition and lm-eval's dataset loading are outside the timing.
One untimed warm-up (--warmup documents of the first task) runs on each side first.

What counts as a document: one question (row). TruthfulQA: editharm scores the union of
the MC1 and MC2 answers once per question; lm-eval runs its two tasks truthfulqa_mc1 and
_mc2, scoring the MC1 answers twice, and both count the n questions. MMLU: lm-eval runs
one task per subject present (its template takes its 5 shots from the subject's dev rows).
Batch size: editharm's counts items (a row holds the context once and every choice);
lm-eval's HF backend counts requests (a context and one continuation; with one-token
continuations, as MMLU's, its logits cache shares one context pass among the choices).

Scores and item-level agreement come from the check script's comparisons (per-choice
log-likelihoods, argmax flips, near ties, identical prompt strings, its tolerances).

Also measured (--long-n > 0): what the 4D segment mask costs on long MMLU rows (5-shot
prompts of --long-tokens tokens; docs/benchmarks.md found +32% at 2,304 tokens). The
engine now scores such rows right-padded without a mask, which is exact for MMLU's
one-token choices (a row is the context alone; no real token attends to a pad) and lets
attention take its causal fast path; the same batches are also scored with the segment
mask, as the engine did before, and the two variants alternate like the engines.

Tiny check (proves the pipeline, not the speed; 9 minutes at load 7-9 with the first data acquisition):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_vs_lm_eval.py --model /work/bench/smol \\
        --mirror /work/shared/data --lm-eval-python /work/lmeval-venv/bin/python --n 4 --rounds 1 \\
        --long-n 2 --work /tmp/bench_vs_lm_eval --out /tmp/bench_vs_lm_eval/report.json

The real run, on a quiet machine (about 10 minutes on one thread; estimate below):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_vs_lm_eval.py --model /work/bench/smol \\
        --mirror /work/shared/data --lm-eval-python /work/lmeval-venv/bin/python \\
        --n 40 --n mmlu=12,hellaswag=16,truthfulqa=8 --rounds 3 --threads 1 --batch-size 16 --long-n 3 \\
        --work results/bench/bench_vs_lm_eval_work --out results/bench/bench_vs_lm_eval.json

Estimate, from the tiny run above (n = 4, 1 round, load 7-9 on 2 cores): CPU seconds per
document and round, editharm + lm-eval: mmlu 2.2 + 2.8, arc_easy 0.2 + 0.5, hellaswag
0.5 + 1.9, lambada_openai 0.25 + 0.33, truthfulqa 1.0 + 7.1; a long (2,304-token) MMLU row
15 per mask variant. So the sizes above take 3 x 213 s + 3 x 3 x 31 s = 920 CPU seconds at
that load; a quiet core runs this model about 1.8x faster per CPU second (287 against 158
tokens per CPU second at 2,304 tokens), so about 510 s, plus about a minute of preparation
(data acquired into --work on the first run, lm-eval's task loading, both models).
Scale --n (all tasks) and --long-n to fit another budget; MMLU's cost per row varies
with the subjects drawn (5-shot prompts of 300 to 2,300 tokens).

The markdown table goes to stdout (for docs/benchmarks.md), progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

DRIVER_FLAG = "--lm-eval-driver"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_TASKS = "mmlu,arc_easy,hellaswag,lambada_openai,truthfulqa"
LONG_TOKENS = 2304  # the longest MMLU batch profiled in docs/benchmarks.md (+32% with the mask)


# ------------------------------------------------------------------ the lm-eval side (runs in lm-eval's venv)


def lm_eval_driver(config: str) -> int:
    """Serve timed lm-eval runs: one JSON command per stdin line, one JSON reply per line.

    config: {"model", "batch_size", "threads", "task_dir", "fewshot_seed"}. Commands:
      {"op": "load", "key", "tasks"}  build lm-eval tasks (reads their datasets; untimed)
      {"op": "run", "key", "limit", "samples_dir"}  time evaluator.evaluate on them; with
          samples_dir, write results_bench.json and samples_<task>_bench.jsonl there as the
          lm-eval CLI lays them out, for the check script's readers
    Only the stdlib, torch and lm_eval are imported here: editharm is not installed in lm-eval's venv.
    """
    cfg = json.loads(config)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # prints of lm-eval and transformers go to the log, never into the replies
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        channel.write(json.dumps(obj, default=str) + "\n")
        channel.flush()

    import importlib.metadata

    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(cfg["threads"])
    lm = HFLM(pretrained=cfg["model"], dtype="float32", device="cpu", batch_size=cfg["batch_size"])
    manager = TaskManager(include_path=cfg["task_dir"], include_defaults=False)
    loaded: dict = {}
    reply({"ready": True, "threads": torch.get_num_threads(), "versions": {
        p: importlib.metadata.version(p) for p in ("lm_eval", "torch", "transformers")}})
    while line := sys.stdin.readline():
        cmd = json.loads(line)
        try:
            if cmd["op"] == "load":
                tasks = manager.load(cmd["tasks"])
                for task in tasks["tasks"].values():
                    # as simple_evaluate does: no num_fewshot means zero-shot, and the few-shot seed is fixed
                    if task.get_config("num_fewshot") is None:
                        task.set_config(key="num_fewshot", value=0)
                    task.set_fewshot_seed(seed=cfg["fewshot_seed"])
                loaded[cmd["key"]] = tasks
                reply({"tasks": sorted(tasks["tasks"])})
            elif cmd["op"] == "run":
                load_before = os.getloadavg()
                wall, cpu = time.perf_counter(), time.process_time()
                res = evaluate(lm=lm, task_dict=loaded[cmd["key"]], limit=cmd.get("limit"), bootstrap_iters=0,
                               log_samples=True)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                docs = sum(len(s) for s in res["samples"].values())
                if cmd.get("samples_dir"):
                    out = Path(cmd["samples_dir"])
                    out.mkdir(parents=True, exist_ok=True)
                    for name, samples in res["samples"].items():
                        (out / f"samples_{name}_bench.jsonl").write_text(
                            "".join(json.dumps(s, default=str) + "\n" for s in samples), encoding="utf-8")
                    (out / "results_bench.json").write_text(json.dumps({"results": res["results"]}, default=str),
                                                            encoding="utf-8")
                metrics = {t: {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                           for t, m in res["results"].items()}
                reply({"wall_s": wall, "cpu_s": cpu, "docs": docs, "load_before": load_before,
                       "load_after": os.getloadavg(), "metrics": metrics})
            else:
                reply({"error": f"unknown op {cmd['op']!r}"})
        except Exception as e:  # the caller raises it, naming the log, which gets the traceback
            traceback.print_exc()
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__" and sys.argv[1:2] == [DRIVER_FLAG]:
    sys.exit(lm_eval_driver(sys.argv[2]))


# ------------------------------------------------------------------ the editharm side

import torch  # noqa: E402

from editharm.evaluate.engine import (  # noqa: E402
    _batches, _make_unit, _pad_id, _score_batch, encode_choices, model_max_length, pack_units, score_choices)
from editharm.evaluate.tasks import get_task  # noqa: E402
from editharm.io import package_versions, write_json  # noqa: E402
from editharm.models import load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "scripts"))
from bench_scoring import Missing, dataset_loader, dataset_specs, parse_n, task_rows  # noqa: E402
from check_against_lm_eval import (  # noqa: E402
    check_mmlu, check_truthfulqa, choice_requests, compare_harm, comparison_row, lm_eval_env, lm_eval_tasks_dir,
    write_harm_configs, write_mmlu_configs, write_truthfulqa_configs)


class LmEvalDriver:
    """The lm-eval driver process (lm_eval_driver above, under lm-eval's python); `call` sends one command."""

    def __init__(self, python: str, config: dict, log_path: Path, threads: int, datasets_cache: Path):
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8")
        # its own datasets cache: lm-eval's JSON loader keeps a converted copy of every local file
        env = {**lm_eval_env(threads), "HF_DATASETS_CACHE": str(datasets_cache)}
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), DRIVER_FLAG, json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=env)
        self.ready = self._read()

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"the lm-eval driver exited with status {rc}; the end of its log {self.log_path}:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"lm-eval driver: {reply['error']} (its log: {self.log_path})")
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # its command loop ends at end of input
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # still inside a run (this side failed or was interrupted)
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def editharm_round(model, tokenizer, task, rows: list[dict], shots, batch_size: int) -> tuple[dict, list, list]:
    """One timed editharm pass over the rows: (timing and metrics, items, outputs)."""
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    items = task.items(rows, shots)
    outputs = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False)
    metrics = task.score(items, outputs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return ({"wall_s": wall, "cpu_s": cpu, "docs": len(rows), "load_before": load_before, "load_after": os.getloadavg(),
             "metrics": metrics}, items, outputs)


def speed(rounds: list[dict]) -> dict:
    """Docs/s over all rounds (total docs / total seconds), per wall and per CPU second, and per round."""
    docs = sum(r["docs"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    cpu = sum(r["cpu_s"] for r in rounds)
    per_round = [r["docs"] / r["wall_s"] for r in rounds]
    return {"docs": docs, "wall_s": wall, "cpu_s": cpu, "docs_per_s": docs / wall, "docs_per_cpu_s": docs / cpu,
            "docs_per_s_rounds": per_round, "docs_per_s_median": statistics.median(per_round)}


def lm_eval_tasks_for(name: str, rows: list[dict], shots, lm_tasks: Path, task_dir: Path) -> tuple[list[str], dict]:
    """Write lm-eval's configs for our rows of task `name`: (lm-eval task names, extra facts for the comparison)."""
    if name == "mmlu":
        subjects = list(dict.fromkeys(r["subject"] for r in rows))
        return write_mmlu_configs(rows, shots, subjects, lm_tasks, task_dir), {"subjects": subjects}
    if name == "truthfulqa":
        return write_truthfulqa_configs(rows, lm_tasks, task_dir), {}
    return write_harm_configs({name: (rows, None)}, lm_tasks, task_dir), {}


def agreement(name: str, items, outputs, metrics: dict, lm_out: Path, extra: dict) -> list[dict]:
    """The check script's comparison rows for one task (metrics, per-choice log-likelihoods, prompts)."""
    rows: list[dict] = []

    def add(task: str, metric: str, mine: float, theirs: float, tol: float, detail: dict) -> None:
        rows.append(comparison_row(task, metric, mine, theirs, tol, detail))

    ours = {"items": items, "outputs": outputs, "metrics": metrics}
    if name == "mmlu":
        check_mmlu(ours, lm_out, extra["subjects"], add)
    elif name == "truthfulqa":
        check_truthfulqa(ours, lm_out, add)
    else:
        compare_harm({name: {**ours, "requests": choice_requests(name, items, outputs)}}, lm_out, add)
    return rows


# ------------------------------------------------------------------ the mask cost on long MMLU rows


def long_mmlu_items(rows_of, tokenizer, n: int, target_tokens: int) -> tuple[list, list[int]]:
    """The n MMLU test items (5-shot) whose prompt length is nearest target_tokens, and their token counts."""
    task = get_task("mmlu")
    items = task.items(rows_of(task.DATASET), rows_of(task.SHOTS_DATASET))
    # tokenise only the longest prompts by characters: about 4 characters a token, so this pool holds the target
    pool = sorted(items, key=lambda it: len(it.context), reverse=True)[: max(50 * n, 500)]
    lengths = [len(ids) for ids in tokenizer([it.context for it in pool])["input_ids"]]
    order = sorted(range(len(pool)), key=lambda k: abs(lengths[k] - target_tokens))[:n]
    return [pool[k] for k in order], [lengths[k] for k in order]


def score_with_segment_mask(model, tokenizer, items, batch_size: int) -> list[list[float]]:
    """The engine's own batches, each packed with the 4D segment mask: how the engine scored them before session 12.

    The engine now runs one-segment rows (MMLU's one-token choices: the row is the context
    alone) right-padded without a mask; this is the same batches, layout and read positions
    with the explicit L x L mask, so that the mask is the only difference. It uses the
    engine's internals (_make_unit, _batches, pack_units, _score_batch).
    """
    max_len = model_max_length(model)
    units = []
    for i, item in enumerate(items):
        ctx, conts = encode_choices(tokenizer, item.context, item.choices)
        units.append(_make_unit(i, ctx, conts, max_len, item.id))
    units.sort(key=lambda u: u.length, reverse=True)
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    device = next(model.parameters()).device
    logprobs: list[list[float]] = [[] for _ in items]
    for batch in _batches(units, batch_size, vocab):
        packed = pack_units(batch, _pad_id(tokenizer), "right", torch.float32, device, mask="segments")
        lps, _ = _score_batch(model, packed)
        for unit, lp in zip(batch, lps):
            logprobs[unit.index] = [math.fsum(choice) for choice in lp]
    return logprobs


def mask_cost(model, tokenizer, items, lengths: list[int], batch_size: int, rounds: int) -> dict:
    """Docs/s of long MMLU rows with the 4D segment mask (before) and through the engine (no mask), alternating."""
    timings: dict[str, list[dict]] = {"segment_mask": [], "engine_no_mask": []}
    max_diff = 0.0
    for _ in range(rounds):
        for variant in timings:
            load_before = os.getloadavg()
            wall, cpu = time.perf_counter(), time.process_time()
            if variant == "segment_mask":
                masked = score_with_segment_mask(model, tokenizer, items, batch_size)
            else:
                plain = [o.logprobs for o in score_choices(model, tokenizer, items, batch_size=batch_size, progress=False)]
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timings[variant].append({"wall_s": wall, "cpu_s": cpu, "docs": len(items), "load_before": load_before,
                                     "load_after": os.getloadavg()})
        max_diff = max(max_diff, max(abs(a - b) for m, p in zip(masked, plain) for a, b in zip(m, p)))
    packed, bare = speed(timings["segment_mask"]), speed(timings["engine_no_mask"])
    return {"n": len(items), "tokens_min": min(lengths), "tokens_mean": sum(lengths) / len(lengths),
            "tokens_max": max(lengths), "batch_size": batch_size, "segment_mask": packed, "engine_no_mask": bare,
            "mask_extra_cost_wall": packed["wall_s"] / bare["wall_s"] - 1,
            "mask_extra_cost_cpu": packed["cpu_s"] / bare["cpu_s"] - 1,
            "max_abs_loglik_diff": max_diff, "rounds": timings}


# ------------------------------------------------------------------ report


def _fmt_load(load) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def markdown(report: dict) -> str:
    lines = [f"model `{report['model']}`, threads {report['threads']} (lm-eval: {report['lm_eval_threads']}), "
             f"batch size {report['batch_size']} (editharm: items; lm-eval: requests), {report['rounds']} rounds "
             f"alternating, seed {report['seed']}; load average (1/5/15 min) {_fmt_load(report['load_avg_at_start'])} "
             f"at the start, {_fmt_load(report['load_avg_at_end'])} at the end; lm-eval {report['lm_eval_versions']['lm_eval']}, "
             f"torch {report['versions'].get('torch')}, transformers {report['versions'].get('transformers')}", "",
             "| task | n | editharm docs/s | lm-eval docs/s | editharm / lm-eval | editharm docs/CPU s | "
             "lm-eval docs/CPU s | editharm / lm-eval (CPU) | load before / after | scores editharm / lm-eval | "
             "item agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in report["tasks"].items():
        if t["status"] != "ok":
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | - | {t['status']}: {t['reason']} |")
            continue
        e, lm = t["editharm"], t["lm_eval"]
        scores = "; ".join(f"{r['metric']} {r['editharm']:.3f} / {r['lm_eval']:.3f}" for r in t["agreement"])
        a = t["agreement_summary"]
        flips = ", ".join(f"{a[k]} {k.split('_disagreements')[0].replace('_', ' ')}" for k in FLIPS if k in a)
        agree = (f"of {a['n']} docs differ: {flips}, {a['prompt_mismatches']} prompts; "
                 f"max dLL {a['max_abs_loglik_diff']:.1e}; {'ok' if a['ok'] else 'NOT ok'}")
        lines.append(f"| {name} | {t['n']} | {e['docs_per_s']:.2f} | {lm['docs_per_s']:.2f} | {t['ratio_wall']:.2f}x | "
                     f"{e['docs_per_cpu_s']:.2f} | {lm['docs_per_cpu_s']:.2f} | {t['ratio_cpu']:.2f}x | "
                     f"{t['load_before'][0]:.1f} / {t['load_after'][0]:.1f} | {scores} | {agree} |")
    m = report.get("mask_cost")
    if m:
        lines += ["", "Long MMLU rows, the same batches with the 4D segment mask (the engine before) and through "
                      "the engine, which runs them without a mask (exact for one-token choices):", "",
                  "| rows | tokens min / mean / max | batch size | 4D segment mask docs/s | engine, no mask docs/s | "
                  "extra cost of the mask (wall / CPU) | max abs dLL between them |",
                  "|---|---|---|---|---|---|---|",
                  f"| {m['n']} | {m['tokens_min']} / {m['tokens_mean']:.0f} / {m['tokens_max']} | {m['batch_size']} | "
                  f"{m['segment_mask']['docs_per_s']:.3f} | {m['engine_no_mask']['docs_per_s']:.3f} | "
                  f"{100 * m['mask_extra_cost_wall']:+.1f}% / {100 * m['mask_extra_cost_cpu']:+.1f}% | "
                  f"{m['max_abs_loglik_diff']:.1e} |"]
    return "\n".join(lines)


FLIPS = ("argmax_disagreements", "argmax_norm_disagreements", "greedy_disagreements")


def summarize_agreement(rows: list[dict]) -> dict:
    """One task's agreement over its metric rows: the worst of each count (the rows share the per-document detail)."""
    summary = {"n": max(r["n"] for r in rows), "max_abs_loglik_diff": max(r.get("max_abs_loglik_diff", 0.0) for r in rows),
               "prompt_mismatches": max(r["prompt_mismatches"] for r in rows), "ok": all(r["ok"] for r in rows)}
    summary.update({k: max(r[k] for r in rows if k in r) for k in FLIPS if any(k in r for r in rows)})
    return summary


# ------------------------------------------------------------------ main


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local HF model folder (config.json, safetensors, tokenizer)")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated editharm task names (default {DEFAULT_TASKS})")
    ap.add_argument("--n", action="append", default=[], metavar="N | TASK=N",
                    help="documents per task (default 100); TASK=N overrides one task; repeatable")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per task and engine, alternating")
    ap.add_argument("--warmup", type=int, default=4, help="untimed warm-up documents of the first task, each engine")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each engine")
    ap.add_argument("--batch-size", type=int, default=16, help="editharm: items per batch; lm-eval HF backend batch_size")
    ap.add_argument("--seed", type=int, default=1234, help="row sampling seed (the workflow's)")
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir)")
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--datasets", default=str(REPO / "configs" / "datasets_tasks.yaml"))
    ap.add_argument("--lm-eval-python", default=str(REPO / ".venv-lmeval" / "bin" / "python"),
                    help="python of lm-eval's own virtual environment")
    ap.add_argument("--long-n", type=int, default=8, help="long MMLU rows for the mask cost (0: skip it)")
    ap.add_argument("--long-tokens", type=int, default=LONG_TOKENS, help="their prompt length, tokens")
    ap.add_argument("--work", default=str(REPO / "results" / "bench" / "bench_vs_lm_eval_work"),
                    help="prepared data, lm-eval task configs and outputs, the driver's log")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "bench_vs_lm_eval.json"))
    args = ap.parse_args(argv)
    for option in ("rounds", "threads", "batch_size"):
        if getattr(args, option) < 1:
            ap.error(f"--{option.replace('_', '-')} must be at least 1")
    if not Path(args.lm_eval_python).is_file():
        ap.error(f"--lm-eval-python {args.lm_eval_python}: no such file; give the python of the virtual environment "
                 "where lm-eval 0.4.x is installed (e.g. /work/lmeval-venv/bin/python)")

    torch.set_num_threads(args.threads)
    n_default, n_task = parse_n(args.n)
    work = Path(args.work)
    specs, mirror = dataset_specs(Path(args.config), Path(args.datasets))
    rows_of = dataset_loader(specs, args.mirror or mirror, work / "data")
    lm_tasks = lm_eval_tasks_dir(args.lm_eval_python)
    task_dir = work / "lm_eval_tasks"

    # preparation, untimed: rows, lm-eval configs, both models, lm-eval's datasets
    plan: list[tuple[str, object, list, object, list[str], dict]] = []
    skipped: dict[str, str] = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = get_task(name)
        if task.KIND != "choice":
            raise SystemExit(f"--tasks {name}: a {task.KIND} task; this benchmark compares log-likelihood tasks only")
        try:
            rows, shots = task_rows(task, n_task.get(name, n_default), args.seed, rows_of)
        except Missing as e:
            skipped[name] = str(e)
            log(f"{name}: skipped: {e}")
            continue
        lm_names, extra = lm_eval_tasks_for(name, rows, shots, lm_tasks, task_dir)
        plan.append((name, task, rows, shots, lm_names, extra))

    model, tokenizer = load_model(args.model, device="cpu")
    driver = LmEvalDriver(args.lm_eval_python, {"model": args.model, "batch_size": args.batch_size,
                                                "threads": args.threads, "task_dir": str(task_dir), "fewshot_seed": 1234},
                          work / "lm_eval_driver.log", args.threads, work / "hf_datasets")
    report: dict = {"model": args.model, "threads": torch.get_num_threads(), "lm_eval_threads": driver.ready["threads"],
                    "batch_size": args.batch_size, "rounds": args.rounds, "seed": args.seed,
                    "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                    "platform": platform.platform(), "cpus": os.cpu_count(), "versions": package_versions(),
                    "lm_eval_versions": driver.ready["versions"], "load_avg_at_start": list(os.getloadavg()), "tasks": {}}
    try:
        for name, task, rows, shots, lm_names, _ in plan:
            driver.call(op="load", key=name, tasks=lm_names)
        if plan and args.warmup > 0:
            name, task, rows, shots, lm_names, _ = plan[0]
            editharm_round(model, tokenizer, task, rows[: args.warmup], shots, args.batch_size)
            driver.call(op="run", key=name, limit=max(1, args.warmup // len(lm_names)))

        t0 = time.perf_counter()
        for name, task, rows, shots, lm_names, extra in plan:
            load_before = os.getloadavg()
            mine, theirs = [], []
            lm_out = work / "lm_eval_output" / name
            for k in range(args.rounds):
                timing, items, outputs = editharm_round(model, tokenizer, task, rows, shots, args.batch_size)
                mine.append(timing)
                theirs.append(driver.call(op="run", key=name, samples_dir=str(lm_out) if k == 0 else None))
                log(f"{name} round {k + 1}/{args.rounds}: editharm {mine[-1]['wall_s']:.1f} s, "
                    f"lm-eval {theirs[-1]['wall_s']:.1f} s ({len(rows)} docs)")
            rows_agree = agreement(name, items, outputs, mine[-1]["metrics"], lm_out, extra)
            e, lm = speed(mine), speed([{**r, "docs": len(rows)} for r in theirs])
            report["tasks"][name] = {
                "status": "ok", "n": len(rows), "lm_eval_tasks": lm_names, "editharm": e, "lm_eval": lm,
                "lm_eval_docs_seen": [r["docs"] for r in theirs],
                "ratio_wall": e["docs_per_s"] / lm["docs_per_s"], "ratio_cpu": e["docs_per_cpu_s"] / lm["docs_per_cpu_s"],
                "editharm_metrics": mine[-1]["metrics"], "lm_eval_metrics": theirs[-1]["metrics"],
                "agreement": rows_agree, "agreement_summary": summarize_agreement(rows_agree),
                "editharm_rounds": mine, "lm_eval_rounds": theirs,
                "load_before": list(load_before), "load_after": list(os.getloadavg())}
            write_json(args.out, report)  # partial results survive an interrupted run
        for name, reason in skipped.items():
            report["tasks"][name] = {"status": "skipped", "reason": reason}
        if args.long_n > 0:
            items, lengths = long_mmlu_items(rows_of, tokenizer, args.long_n, args.long_tokens)
            report["mask_cost"] = mask_cost(model, tokenizer, items, lengths, args.batch_size, args.rounds)
        report["wall_seconds"] = time.perf_counter() - t0
    finally:
        driver.close()
    report["load_avg_at_end"] = list(os.getloadavg())
    write_json(args.out, report)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
