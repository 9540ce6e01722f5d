"""Scoring-engine speed per task against the model's raw forward throughput, measured in the same run.

For each task: examples/s and tokens/s of `run_task` (tokens = real input tokens the
model ran; for generation, prompt plus generated), and the raw forward speed of plain
unpadded batches of the same batch size (within the engine's token budget per batch)
and the task's mean row length, measured right
before and right after the task (their mean is the reference, which damps drift on a
shared machine). The target for log-likelihood tasks is at least 70% of raw speed.
The mean row length comes from a warm-up batch for log-likelihood tasks; for
generation tasks it is the mean prompt length (a warm-up generation would cost as much
as the run), and their share of raw speed is context, not a target: decoding runs one
token per row per forward pass.
Speeds are also given per CPU second of this process (`*_cpu`), which a busy machine
disturbs less than wall time. The report holds the task's metrics, i.e. the unedited
model's scores on the sampled items, and for generation tasks every generation, to read.

Every registered task whose dataset is available can be benchmarked: `--tasks all`
(or a suite name, or a comma list). Dataset specs come from config.yaml plus
configs/datasets_tasks.yaml; the files are acquired (mirror first, sha256 checked) and
normalised by the workflow's own steps (editharm.jobs.download_dataset and
prepare_dataset) into --data-dir, reused on later runs. Rows are sampled as the
workflow's score_task samples them (`random.Random(seed).sample(rows, n)`), so with the
same n, seed and batch size the scores equal the workflow's unedited-model scores.
Tasks whose dataset has no config entry or cannot be acquired are reported as skipped
with the reason.

    nice .venv/bin/python benchmarks/bench_scoring.py --model cache/models/smollm2-135m \
        --tasks all --n 100 --n gsm8k=30,nq_open=30,samsum=20,conll03=8,boolq=50,rte=50,bbh=10,gsm8k_8shot=16 \
        --raw-passes 1 --threads 1 --out results/bench/bench_scoring.json

(`--n conll03=8` counts sentences, four items each; results and analysis: docs/benchmarks.md.)

The explicit-file form still works (only these two tasks, from the given files):

    .venv/bin/python benchmarks/bench_scoring.py --model /tmp/smol \
        --sst2 ../shared/data/sst2/dev.tsv --nq ../shared/data/nq_open/NQ-open.dev.jsonl \
        --n-sst2 200 --n-nq 100 --threads 1 --naive --out bench_scoring.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
import yaml

from editharm.datasets import get_format
from editharm.evaluate.engine import MAX_BATCH_TOKENS, encode_choices, forward_throughput, run_task
from editharm.evaluate.tasks import get_task, known_tasks, suite
from editharm.io import package_versions, read_jsonl, write_json
from editharm.models import load_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_N = 100


# ------------------------------------------------------------------ data


def load_rows(fmt: str, path: str, n: int, seed: int) -> list[dict]:
    """Rows of one explicitly given file (the --sst2/--nq form)."""
    file = Path(path)
    rows = list(get_format(fmt)(file.parent, {"files": {file.name: {}}}))
    return sample_rows(rows, n, seed)


def sample_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    # as editharm.jobs.score_task samples a task's rows
    return random.Random(seed).sample(rows, n) if n is not None and n < len(rows) else rows


def dataset_specs(config_path: Path, tasks_path: Path) -> tuple[dict, str | None]:
    """Dataset entries of config.yaml merged with configs/datasets_tasks.yaml, and the mirror folder."""
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    specs = dict(config.get("datasets") or {})
    if tasks_path.is_file():
        specs.update(yaml.safe_load(tasks_path.read_text()).get("datasets") or {})
    mirror = config.get("mirror_dir")
    if mirror is not None and not Path(mirror).is_absolute():
        # config paths are relative to the directory snakemake runs in (the repository root)
        mirror = str((config_path.parent / mirror).resolve())
    return specs, mirror


class Missing(Exception):
    """A task's data is not available here; the message is the reason it is skipped."""


def prepared_dataset(name: str, specs: dict, mirror: str | None, data_dir: Path) -> list[dict]:
    """Prepared rows of dataset `name`: acquired and normalised by the workflow's steps, cached in data_dir."""
    from editharm.jobs import download_dataset, prepare_dataset
    from editharm.plan import Paths

    if name not in specs:
        raise Missing(f"dataset {name!r} has no entry in config.yaml or configs/datasets_tasks.yaml "
                      "(no local copy; see the end of configs/datasets_tasks.yaml)")
    paths = Paths({"results_dir": str(data_dir), "cache_dir": str(data_dir)})
    manifest, prepared = Path(paths.raw_manifest(name)), Path(paths.prepared(name))
    if not prepared.is_file():
        try:
            if not manifest.is_file():
                download_dataset(name, specs[name], mirror, str(manifest))
            prepare_dataset(specs[name], str(manifest), str(prepared))
        except Exception as e:  # offline, checksum, format: skip the task, say why
            raise Missing(f"dataset {name!r} could not be acquired or prepared: {type(e).__name__}: {e}") from e
    return read_jsonl(prepared)


def dataset_loader(specs: dict, mirror: str | None, data_dir: Path):
    """rows_of(dataset): its prepared rows (prepared_dataset), read once per run; raises Missing."""
    cache: dict[str, list[dict]] = {}

    def rows_of(dataset: str) -> list[dict]:
        if dataset not in cache:
            cache[dataset] = prepared_dataset(dataset, specs, mirror, data_dir)
        return cache[dataset]

    return rows_of


def task_rows(task, n: int | None, seed: int, rows_of) -> tuple[list[dict], list[dict] | None]:
    """A task's rows sampled as the workflow samples them, and its shot rows (None without); raises Missing."""
    rows = sample_rows(rows_of(task.DATASET), n, seed)
    return rows, rows_of(task.SHOTS_DATASET) if task.SHOTS_DATASET else None


def parse_n(values: list[str]) -> tuple[int, dict[str, int]]:
    """`--n 100 --n gsm8k=20` -> (100, {"gsm8k": 20})."""
    default, per_task = DEFAULT_N, {}
    for value in values:
        for part in value.split(","):
            name, sep, number = part.partition("=")
            if sep:
                per_task[name.strip()] = int(number)
            else:
                default = int(name)
    return default, per_task


def select_tasks(spec: str) -> list[str]:
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":  # log-likelihood tasks first (the 70% target), then generation
            found = sorted(known_tasks(), key=lambda t: (get_task(t).KIND != "choice", t))
        elif part in known_tasks():
            found = [part]
        elif suite(part):
            found = suite(part)
        else:
            raise SystemExit(f"unknown task or suite {part!r}; tasks: {', '.join(known_tasks())}")
        names += [t for t in found if t not in names]
    return names


# ------------------------------------------------------------------ timing


@torch.inference_mode()
def naive_choice_speed(model, tokenizer, items, batch_size: int) -> float:
    """Examples/s scoring each choice as its own padded row with full logits (no sharing, no skipping)."""
    seqs = []
    for item in items:
        ctx, conts = encode_choices(tokenizer, item.context, item.choices)
        seqs += [ctx + c for c in conts]
    seqs.sort(key=len, reverse=True)
    start = time.perf_counter()
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i:i + batch_size]
        width = len(batch[0])
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(batch):
            ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
        model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    return len(items) / (time.perf_counter() - start)


def raw_speed(model, tokenizer, seq_len: int, batch_size: int, passes: int) -> tuple[float, float]:
    """Raw forward tokens/s by wall time (engine.forward_throughput) and per CPU second of this process."""
    n_tokens = max(2048, batch_size * seq_len * passes)
    cpu = time.process_time()
    wall_speed = forward_throughput(model, tokenizer, n_tokens=n_tokens, seq_len=seq_len, batch_size=batch_size)
    cpu = time.process_time() - cpu
    ran = (1 + -(-n_tokens // (batch_size * seq_len))) * batch_size * seq_len  # its warm-up pass plus the timed passes
    return wall_speed, ran / cpu if cpu > 0 else float("inf")


def bench_task(model, tokenizer, name: str, rows: list[dict], batch_size: int, naive: bool,
               shots: list[dict] | None = None, raw_passes: int = 4, n_samples: int = 3) -> dict:
    task = get_task(name)
    if task.KIND != "generation":
        # raw speed at the task's mean row length, known from a warm-up run of one batch (rolling
        # log-likelihood: of one document, which may alone be thousands of tokens)
        warm_rows = rows[:1] if task.KIND == "rolling" else rows[:batch_size]
        warm = run_task(model, tokenizer, task, warm_rows, shots=shots, batch_size=batch_size, progress=False)
        if warm["status"] != "ok":
            return {k: warm[k] for k in ("status", "reason", "n", "metrics")} | {"kind": task.KIND}
        seq_len = max(8, round(warm["tokens"] / warm["n"]))
    else:
        # generation: at the mean prompt length (a warm-up generation can cost as much as the run:
        # BBH rows may generate 1024 tokens each); the first raw measurement warms up the model
        prompts = tokenizer([it.prompt for it in task.items(rows, shots)])["input_ids"]
        seq_len = max(8, round(sum(map(len, prompts)) / len(prompts)))
    # raw speed before and after the task, in batches within the engine's token budget
    raw_batch = max(1, min(batch_size, MAX_BATCH_TOKENS // seq_len))
    raw = [raw_speed(model, tokenizer, seq_len, raw_batch, raw_passes)]
    load = os.getloadavg()[0]
    cpu = time.process_time()
    result = run_task(model, tokenizer, task, rows, shots=shots, batch_size=batch_size,
                      return_outputs=task.KIND == "generation")
    cpu = time.process_time() - cpu
    raw.append(raw_speed(model, tokenizer, seq_len, raw_batch, raw_passes))
    if result["status"] != "ok":
        return {k: result[k] for k in ("status", "reason", "n", "metrics")} | {"kind": task.KIND}
    raw_mean = sum(r[0] for r in raw) / len(raw)
    raw_cpu_mean = sum(r[1] for r in raw) / len(raw)
    tokens_per_cpu_s = result["tokens"] / cpu if cpu > 0 else float("inf")
    out = {k: result[k] for k in ("status", "metrics", "n", "seconds", "tokens", "examples_per_s", "tokens_per_s")}
    out.update({"kind": task.KIND, "n_requested": len(rows), "mean_tokens_per_example": result["tokens"] / result["n"],
                "raw_forward_tokens_per_s": raw_mean, "raw_forward_runs": [r[0] for r in raw],
                "raw_seq_len": seq_len, "raw_batch_size": raw_batch,
                "share_of_raw": result["tokens_per_s"] / raw_mean, "tokens_unshared": result.get("tokens_unshared"),
                "cpu_seconds": cpu, "tokens_per_cpu_s": tokens_per_cpu_s, "raw_forward_tokens_per_cpu_s": raw_cpu_mean,
                "raw_forward_cpu_runs": [r[1] for r in raw], "share_of_raw_cpu": tokens_per_cpu_s / raw_cpu_mean,
                "load_1min_at_start": load, "load_1min_at_end": os.getloadavg()[0]})
    if task.KIND == "generation":
        items = task.items(rows, shots)
        out["prompt_ends"] = [{"id": it.id, "prompt_end": it.prompt[-300:]} for it in items[:n_samples]]
        out["generations"] = [{"id": it.id, "output": o, "references": it.references}
                              for it, o in zip(items, result["outputs"])]
        out["empty_outputs"] = sum(1 for o in result["outputs"] if not o.strip())
    if naive and task.KIND == "choice":
        items = task.items(rows[:min(len(rows), 4 * batch_size)], shots)
        out["naive_examples_per_s"] = naive_choice_speed(model, tokenizer, items, batch_size)
    return out


# ------------------------------------------------------------------ main


def _line(name: str, r: dict) -> str:
    if r["status"] == "skipped":
        return f"{name:14s} skipped: {r['reason']}"
    if r["status"] != "ok":
        return f"{name:14s} {r['status']}: {r.get('reason')}"
    return (f"{name:14s} n={r['n']:4d} {r['examples_per_s']:7.2f} ex/s {r['tokens_per_s']:8.1f} tok/s "
            f"raw {r['raw_forward_tokens_per_s']:8.1f} tok/s (L={r['raw_seq_len']}) "
            f"share {100 * r['share_of_raw']:5.1f}% (cpu {100 * r['share_of_raw_cpu']:5.1f}%)  "
            f"metrics {json.dumps(r['metrics'])}"
            + (f"  naive {r['naive_examples_per_s']:.2f} ex/s" if "naive_examples_per_s" in r else ""))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="fetched model folder (config.json, safetensors, tokenizer)")
    ap.add_argument("--tasks", help="'all', a suite (gu2024, li2024) or comma-separated task names; "
                                    "data through config.yaml + configs/datasets_tasks.yaml")
    ap.add_argument("--n", action="append", default=[], metavar="N | TASK=N",
                    help=f"items per task (default {DEFAULT_N}); TASK=N overrides one task; repeatable")
    ap.add_argument("--config", default=str(REPO / "config.yaml"), help="for its datasets and mirror_dir")
    ap.add_argument("--datasets", default=str(REPO / "configs" / "datasets_tasks.yaml"))
    ap.add_argument("--mirror", help="mirror folder (default: config's mirror_dir)")
    ap.add_argument("--data-dir", default=str(REPO / "cache" / "bench"),
                    help="where acquired and prepared data are kept (the workflow's data/raw, data/prepared layout)")
    ap.add_argument("--sst2", help="GLUE SST-2 dev.tsv")
    ap.add_argument("--nq", help="NQ-open dev JSONL")
    ap.add_argument("--n-sst2", type=int, default=200)
    ap.add_argument("--n-nq", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--raw-passes", type=int, default=4, help="timed raw forward passes before and after each task")
    ap.add_argument("--samples", type=int, default=3, help="prompts recorded per generation task (all generations are recorded)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--naive", action="store_true", help="also time naive per-choice scoring on a subset")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not (args.tasks or args.sst2 or args.nq):
        ap.error("give --tasks, or at least one of --sst2, --nq")
    if args.threads:
        torch.set_num_threads(args.threads)
    n_default, n_task = parse_n(args.n)

    # (task, rows, shots) to run, or the reason a task is skipped
    plan: list[tuple[str, list[dict] | None, list[dict] | None, str | None]] = []
    if args.sst2:
        plan.append(("sst2", load_rows("sst2_glue_tsv", args.sst2, args.n_sst2, args.seed), None, None))
    if args.nq:
        plan.append(("nq_open", load_rows("nq_open_jsonl", args.nq, args.n_nq, args.seed), None, None))
    sources: dict[str, str] = {}
    if args.tasks:
        specs, mirror = dataset_specs(Path(args.config), Path(args.datasets))
        rows_of = dataset_loader(specs, args.mirror or mirror, Path(args.data_dir))
        for name in select_tasks(args.tasks):
            if any(p[0] == name for p in plan):
                continue  # given as an explicit file
            task = get_task(name)
            try:
                rows, shots = task_rows(task, n_task.get(name, n_default), args.seed, rows_of)
            except Missing as e:
                plan.append((name, None, None, str(e)))
                continue
            sources[name] = task.DATASET + (f" (shots: {task.SHOTS_DATASET})" if task.SHOTS_DATASET else "")
            plan.append((name, rows, shots, None))

    model, tokenizer = load_model(args.model)
    report = {"model": args.model, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "seed": args.seed, "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "platform": platform.platform(), "cpus": os.cpu_count(), "versions": package_versions(),
              "load_avg_at_start": list(os.getloadavg()), "tasks": {}}
    t0 = time.perf_counter()
    for name, rows, shots, reason in plan:
        if reason is not None:
            r = {"status": "skipped", "reason": reason, "kind": get_task(name).KIND}
        else:
            r = bench_task(model, tokenizer, name, rows, args.batch_size, args.naive, shots=shots,
                           raw_passes=args.raw_passes, n_samples=args.samples)
            if name in sources:
                r["dataset"] = sources[name]
        report["tasks"][name] = r
        print(_line(name, r), file=sys.stderr, flush=True)
        if args.out:  # partial results survive an interrupted run
            write_json(args.out, report)
    report["load_avg_at_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - t0
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
