"""Benchmark the trained editors, MEND and SERAC, on a real model.

For each method: training time on the zsRE training file with the family's default
hyperparameters (configs/methods/<method>/<family>.yaml), then seconds per edit and
CounterFact scores over the first --n CounterFact requests:

  MEND   instance editing (each request alone, from the unedited model: the update is
         added, scored and removed) and one batch of all --n requests;
  SERAC  each request alone in the memory, and all --n requests in one memory (the
         classifier must then pick the right entry among them).

Scores follow ROME's CounterFact comparison: an edit succeeds on a prompt when the mean
per-token NLL of target_new is below target_true's (the reverse for neighbourhood
prompts). The machine may be shared: wall and CPU seconds and the load average are
printed together.

    .venv/bin/python benchmarks/bench_trained_methods.py [--model cache/models/smollm2-135m] [--n 20] [--threads 1]
        [--methods mend serac] [--work /tmp/bench_trained_methods] [--json out.json] [--reuse]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from editharm.api import mirror_file
from editharm.editsets import convert_file
from editharm.methods import load_hparams, load_method
from editharm.methods import mend
from editharm.methods.base import EditContext, WeightUpdate
from editharm.models import layout_for, load_model
from editharm.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1]


def load_requests(fmt: str, path: Path, n: int | None = None) -> list[EditRequest]:
    rows = convert_file(fmt, path).rows
    return [EditRequest.from_json(r) for r in (rows[:n] if n else rows)]


@torch.no_grad()
def mean_nlls(model, tokenizer, prompts: list[str], target: str) -> list[float]:
    """Mean per-token NLL of `target` after each prompt (one padded batch)."""
    batch = mend.encode(tokenizer, prompts, [target] * len(prompts), 128, next(model.parameters()).device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return [mend.target_nll(logits[i:i + 1], batch["labels"][i:i + 1]).item() for i in range(len(prompts))]


def counterfact_scores(model, tokenizer, request: EditRequest) -> dict[str, float]:
    """Efficacy, paraphrase and neighbourhood success (fractions) of one request."""
    groups = {"efficacy": [request.filled_prompt], "paraphrase": list(request.paraphrases),
              "neighbourhood": [p.prompt for p in request.locality]}
    out = {}
    for name, prompts in groups.items():
        if not prompts:
            continue
        new = mean_nlls(model, tokenizer, prompts, request.target_new)
        true = mean_nlls(model, tokenizer, prompts, request.target_true)
        wins = [(n < t) if name != "neighbourhood" else (t < n) for n, t in zip(new, true)]
        out[name] = sum(wins) / len(wins)
    return out


def average(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: statistics.mean(r[k] for r in rows if k in r) for k in keys}


class added:
    """Context manager: a WeightUpdate added to the model, removed (bit-exactly) on exit."""

    def __init__(self, model, update: WeightUpdate):
        self.model, self.update, self.saved = model, update, {}

    def __enter__(self):
        with torch.no_grad():
            for name, delta in self.update.deltas.items():
                p = self.model.get_parameter(name)
                self.saved[name] = p.detach().clone()
                p.add_(delta.to(p.dtype))
        return self.model

    def __exit__(self, *exc):
        with torch.no_grad():
            for name, value in self.saved.items():
                self.model.get_parameter(name).copy_(value)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def bench_method(name: str, model, tokenizer, train_reqs, edits, work: Path, reuse: bool = False,
                 overrides: dict | None = None) -> dict:
    method = load_method(name)
    family = layout_for(model).family
    hp_path = ROOT / "configs" / "methods" / name / f"{family}.yaml"
    hparams = load_hparams(hp_path, method.Hparams)
    if overrides:  # a reduced setting for a slow machine (recorded in the result)
        hparams = dataclasses.replace(hparams, **overrides)
    out_dir = work / name
    record = out_dir / "bench_training.json"
    if reuse and record.exists():
        result = json.loads(record.read_text())
        print(f"[{name}] reusing the training recorded in {record}", file=sys.stderr)
    else:
        print(f"[{name}] training on {len(train_reqs)} requests with {hp_path.relative_to(ROOT)}", file=sys.stderr)
        summary, train_wall, train_cpu = timed(lambda: method.train(model, tokenizer, train_reqs, hparams, out_dir, seed=0))
        result = {"method": name, "hparams": str(hp_path.relative_to(ROOT)), "overrides": overrides or {},
                  "train_requests": len(train_reqs), "train_wall_s": train_wall,
                  "train_cpu_s": train_cpu, "train_summary": summary, "load_after_training": os.getloadavg()}
        record.write_text(json.dumps(result, indent=2, default=str) + "\n")
    ctx = EditContext(layout=layout_for(model), covariance=lambda layer: None, artifacts={"trained_dir": str(out_dir)})

    def score_with(update, request_subset):
        if isinstance(update, WeightUpdate):
            with added(model, update):
                return [counterfact_scores(model, tokenizer, r) for r in request_subset]
        wrapped = method.attach(model, tokenizer, update.state, hparams, ctx)
        return [counterfact_scores(wrapped, tokenizer, r) for r in request_subset]

    single_secs, single_cpu, single_scores = [], [], []
    for r in edits:
        ctx.state = {}
        update, wall, cpu = timed(lambda: method.apply(model, tokenizer, [r], hparams, ctx))
        single_secs.append(wall)
        single_cpu.append(cpu)
        single_scores += score_with(update, [r])
    result["instance"] = {"median_s_per_edit": statistics.median(single_secs),
                          "median_cpu_s_per_edit": statistics.median(single_cpu), **average(single_scores),
                          "efficacy_count": sum(s["efficacy"] for s in single_scores), "load": os.getloadavg(),
                          "peak_rss_mib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    ctx.state = {}
    if method.SUPPORTS_BATCH:
        update, wall, cpu = timed(lambda: method.apply(model, tokenizer, edits, hparams, ctx))
        result["batch"] = {"batch_size": len(edits), "s_per_edit": wall / len(edits), "cpu_s_per_edit": cpu / len(edits),
                           "batch_wall_s": wall, "batch_cpu_s": cpu, **average(score_with(update, edits)),
                           "load": os.getloadavg(),
                           "peak_rss_mib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"[{name}] {json.dumps({k: result[k] for k in ('train_wall_s', 'instance')}, default=str)}", file=sys.stderr)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "cache" / "models" / "smollm2-135m"))
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir, as the pipeline reads it)")
    ap.add_argument("--train", help="zsRE training split, MEND format (default: zsre/zsre_mend_train-1k.json in the mirror)")
    ap.add_argument("--counterfact", help="ROME's CounterFact JSON (default: counterfact/counterfact_filtered.json in the mirror)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["mend", "serac"])
    ap.add_argument("--work", default="/tmp/bench_trained_methods")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--reuse", action="store_true", help="reuse a training already recorded under --work")
    ap.add_argument("--train-n", type=int, help="reduced setting: train on the first N training requests only")
    ap.add_argument("--max-iters", type=int, help="reduced setting: override the hparams' max_iters")
    args = ap.parse_args(argv)
    args.train = args.train or str(mirror_file("zsre/zsre_mend_train-1k.json", args.mirror))
    args.counterfact = args.counterfact or str(mirror_file("counterfact/counterfact_filtered.json", args.mirror))

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, "cpu")
    train_reqs = load_requests("zsre_mend", Path(args.train), args.train_n)
    edits = load_requests("counterfact_rome", Path(args.counterfact), args.n)
    baseline = average([counterfact_scores(model, tokenizer, r) for r in edits])
    results = {"model": args.model, "threads": args.threads, "n_edits": len(edits), "unedited": baseline,
               "load_at_start": os.getloadavg(), "methods": []}
    for name in args.methods:
        results["methods"].append(bench_method(name, model, tokenizer, train_reqs, edits, Path(args.work), args.reuse,
                                                   {"max_iters": args.max_iters} if args.max_iters else None))
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_at_end"] = os.getloadavg()
    results["versions"] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
