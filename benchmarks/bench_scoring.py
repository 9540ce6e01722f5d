"""Scoring-engine speed per task against the model's raw forward throughput, measured in the same run.

For each task: examples/s and tokens/s of `run_task` (tokens = real input tokens the
model ran; for generation, prompt plus generated), and the raw forward speed of plain
unpadded batches of the same batch size and the task's mean row length, measured right
before and right after the task (their mean is the reference, which damps drift on a
shared machine). The target for log-likelihood tasks is at least 70% of raw speed.
Optionally also the naive way of scoring choices (one padded row per choice, full
logits), to show what sharing the context saves.

    .venv/bin/python benchmarks/bench_scoring.py --model /tmp/smol \
        --sst2 ../shared/data/sst2/dev.tsv --nq ../shared/data/nq_open/NQ-open.dev.jsonl \
        --n-sst2 200 --n-nq 100 --threads 1 --naive --out bench_scoring.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from editharm.datasets import get_format
from editharm.evaluate.engine import encode_choices, forward_throughput, run_task
from editharm.evaluate.tasks import get_task
from editharm.io import package_versions, write_json
from editharm.models import load_model


def load_rows(fmt: str, path: str, n: int, seed: int) -> list[dict]:
    file = Path(path)
    rows = list(get_format(fmt)(file.parent, {"files": {file.name: {}}}))
    return random.Random(seed).sample(rows, n) if n < len(rows) else rows


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


def bench_task(model, tokenizer, name: str, rows: list[dict], batch_size: int, naive: bool) -> dict:
    task = get_task(name)
    warm = run_task(model, tokenizer, task, rows[:batch_size], batch_size=batch_size, progress=False)
    # raw speed at the task's mean row length (known from the warm-up), before and after the task
    seq_len = max(8, round(warm["tokens"] / warm["n"]))
    n_raw = max(2048, batch_size * seq_len * 4)
    raw = [forward_throughput(model, tokenizer, n_tokens=n_raw, seq_len=seq_len, batch_size=batch_size)]
    result = run_task(model, tokenizer, task, rows, batch_size=batch_size)
    raw.append(forward_throughput(model, tokenizer, n_tokens=n_raw, seq_len=seq_len, batch_size=batch_size))
    raw_mean = sum(raw) / len(raw)
    out = {k: result[k] for k in ("status", "metrics", "n", "seconds", "tokens", "examples_per_s", "tokens_per_s")}
    out.update({"kind": task.KIND, "mean_tokens_per_example": result["tokens"] / result["n"],
                "raw_forward_tokens_per_s": raw_mean, "raw_forward_runs": raw, "raw_seq_len": seq_len,
                "share_of_raw": result["tokens_per_s"] / raw_mean, "tokens_unshared": result.get("tokens_unshared")})
    if naive and task.KIND == "choice":
        items = task.items(rows[:min(len(rows), 4 * batch_size)])
        out["naive_examples_per_s"] = naive_choice_speed(model, tokenizer, items, batch_size)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="fetched model folder (config.json, safetensors, tokenizer)")
    ap.add_argument("--sst2", help="GLUE SST-2 dev.tsv")
    ap.add_argument("--nq", help="NQ-open dev JSONL")
    ap.add_argument("--n-sst2", type=int, default=200)
    ap.add_argument("--n-nq", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--naive", action="store_true", help="also time naive per-choice scoring on a subset")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    tasks = []
    if args.sst2:
        tasks.append(("sst2", load_rows("sst2_glue_tsv", args.sst2, args.n_sst2, args.seed)))
    if args.nq:
        tasks.append(("nq_open", load_rows("nq_open_jsonl", args.nq, args.n_nq, args.seed)))
    if not tasks:
        ap.error("give at least one of --sst2, --nq")
    report = {"model": args.model, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "platform": platform.platform(), "versions": package_versions(), "tasks": {}}
    for name, rows in tasks:
        report["tasks"][name] = r = bench_task(model, tokenizer, name, rows, args.batch_size, args.naive)
        print(f"{name:8s} n={r['n']:4d} {r['examples_per_s']:7.2f} ex/s {r['tokens_per_s']:8.1f} tok/s "
              f"raw {r['raw_forward_tokens_per_s']:8.1f} tok/s (L={r['raw_seq_len']}) "
              f"share {100 * r['share_of_raw']:5.1f}%  metrics {json.dumps(r['metrics'])}"
              + (f"  naive {r['naive_examples_per_s']:.2f} ex/s" if "naive_examples_per_s" in r else ""),
              file=sys.stderr, flush=True)
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
