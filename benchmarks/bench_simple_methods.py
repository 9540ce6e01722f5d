"""Benchmark KN, FT-L and GRACE on a real model: seconds per edit, efficacy, peak memory.

    .venv/bin/python benchmarks/bench_simple_methods.py [--methods kn ft grace] [--model cache/models/smollm2-135m] [--n 20]

Each method runs in its own subprocess so that its peak resident memory is its own.
KN and GRACE edit one request at a time, each from the unedited model (KN's update is
added and removed again; GRACE's codebook holds that one edit). FT-L is a batch method:
the n requests are one operation (batch size n, as the issue asks), and seconds per
edit is the operation's time divided by n; `--ft-instance` also times it one by one.

Efficacy, paraphrase and neighbourhood scores follow ROME's CounterFact comparison: an
edit succeeds when the mean per-token NLL of target_new after the prompt is below
target_true's (the reverse for neighbourhood prompts, which should keep the old fact).
Hyperparameters come from configs/methods/<method>/llama.yaml unless --hparams-dir
points elsewhere. The machine is shared; the load average is printed with the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from editharm.methods import load_hparams, load_method
from editharm.methods.base import EditContext
from editharm.methods.ft import encode_prompt_target, target_nll
from editharm.models import layout_for, load_model
from editharm.requests import EditRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rome import counterfact_requests  # noqa: E402

from editharm.api import mirror_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def new_beats_true(model, tokenizer, prompts: list[str], new: str, true: str) -> list[bool]:
    device = next(model.parameters()).device
    out = []
    for prompt in prompts:
        batch = encode_prompt_target(tokenizer, [prompt, prompt], [new, true], device)
        nll = target_nll(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch)
        out.append(bool(nll[0] < nll[1]))
    return out


def scores(model, tokenizer, req: EditRequest, efficacy_only: bool = False) -> dict:
    eff = new_beats_true(model, tokenizer, [req.filled_prompt], req.target_new, req.target_true)[0]
    if efficacy_only:
        return {"efficacy": eff}
    para = new_beats_true(model, tokenizer, list(req.paraphrases), req.target_new, req.target_true)
    neigh = new_beats_true(model, tokenizer, [p.prompt for p in req.locality], req.target_new, req.target_true)
    return {"efficacy": eff, "paraphrase": sum(para) / max(1, len(para)),
            "neighbourhood": sum(not x for x in neigh) / max(1, len(neigh))}


@torch.no_grad()
def add_deltas(model, deltas: dict[str, torch.Tensor]) -> None:
    for name, delta in deltas.items():
        model.get_parameter(name).add_(delta.to(model.get_parameter(name).device))


def run_one(method_name: str, args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    method = load_method(method_name)
    hp = load_hparams(Path(args.hparams_dir or ROOT / "configs/methods" / method_name) / f"{args.family}.yaml", method.Hparams)
    model, tokenizer = load_model(args.model, device="cpu")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    context = EditContext(layout=layout_for(model), covariance=lambda layer: None, seed=0)
    requests = counterfact_requests(args.counterfact, args.n)
    # A float64 checksum per parameter, not a full copy: cloning all 135M parameters would add
    # ~540 MB to the peak RSS being measured. The edited weights are copied one update at a time.
    fingerprint = {n: p.detach().double().sum().item() for n, p in model.named_parameters()}
    print(f"{method_name}: {hp}\nthreads {torch.get_num_threads()}  load {os.getloadavg()}", flush=True)

    rows = []
    if method.SUPPORTS_BATCH and not args.ft_instance:
        t, c = time.perf_counter(), time.process_time()
        update = method.apply(model, tokenizer, requests, hp, context)
        seconds, cpu = (time.perf_counter() - t) / len(requests), (time.process_time() - c) / len(requests)
        originals = {n: model.get_parameter(n).detach().clone() for n in update.deltas}
        add_deltas(model, update.deltas)
        for req in requests:
            rows.append({"case": req.case_id, "seconds": seconds, "cpu_seconds": cpu,
                         **scores(model, tokenizer, req, args.efficacy_only)})
        with torch.no_grad():
            for name in update.deltas:
                model.get_parameter(name).copy_(originals[name])
        print(json.dumps(update.info, default=str), flush=True)
    else:
        for req in requests:
            t, c = time.perf_counter(), time.process_time()
            update = method.apply(model, tokenizer, [req], hp, context)
            seconds, cpu = time.perf_counter() - t, time.process_time() - c
            if method.EDITS_WEIGHTS:
                originals = {n: model.get_parameter(n).detach().clone() for n in update.deltas}
                add_deltas(model, update.deltas)
                row = scores(model, tokenizer, req, args.efficacy_only)
                with torch.no_grad():  # put the exact original values back, not W + dW - dW
                    for name in update.deltas:
                        model.get_parameter(name).copy_(originals[name])
            else:
                method.attach(model, tokenizer, update.state, hp, context)
                row = scores(model, tokenizer, req, args.efficacy_only)
                method.detach(model)
            info = {k: v for k, v in update.info.items() if k in ("n_neurons", "action", "iterations", "loss_last", "steps")}
            rows.append({"case": req.case_id, "seconds": seconds, "cpu_seconds": cpu, **row, **info})
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    assert all(fingerprint[n] == p.detach().double().sum().item() for n, p in model.named_parameters()), \
        "the model was left modified"
    summary = {
        "method": method_name, "n": len(rows), "batch": len(requests) if method.SUPPORTS_BATCH and not args.ft_instance else 1,
        "median_s_per_edit": statistics.median(r["seconds"] for r in rows),
        "median_cpu_s_per_edit": statistics.median(r["cpu_seconds"] for r in rows),
        "efficacy_count": sum(r["efficacy"] for r in rows),
        "efficacy": sum(r["efficacy"] for r in rows) / len(rows),
        "paraphrase": None if args.efficacy_only else statistics.mean(r["paraphrase"] for r in rows),
        "neighbourhood": None if args.efficacy_only else statistics.mean(r["neighbourhood"] for r in rows),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mib": rss_loaded, "threads": torch.get_num_threads(), "load": os.getloadavg(),
        "hparams": str(hp), "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    print("SUMMARY " + json.dumps({**summary, "rows": rows}, default=str), flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["kn", "ft", "grace"])
    ap.add_argument("--model", default=str(ROOT / "cache" / "models" / "smollm2-135m"))
    ap.add_argument("--family", default="llama", help="hparams file name inside configs/methods/<method>/")
    ap.add_argument("--hparams-dir", help="folder holding <family>.yaml (default configs/methods/<method>)")
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir, as the pipeline reads it)")
    ap.add_argument("--counterfact", help="ROME's CounterFact JSON (default: counterfact/counterfact_filtered.json in the mirror)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, help="torch threads (1 is often faster on a loaded shared machine)")
    ap.add_argument("--ft-instance", action="store_true", help="edit batch methods one request at a time")
    ap.add_argument("--efficacy-only", action="store_true", help="score only the edit prompts (faster)")
    ap.add_argument("--json", help="write the summaries (and per-edit rows) here")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.counterfact = args.counterfact or str(mirror_file("counterfact/counterfact_filtered.json", args.mirror))

    if args.in_process:
        run_one(args.methods[0], args)
        return
    summaries = []
    for name in args.methods:
        cmd = [sys.executable, __file__, "--in-process", "--methods", name] + [
            a for a in (argv if argv is not None else sys.argv[1:]) if a not in args.methods and a != "--methods"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        summaries += [json.loads(line[len("SUMMARY "):]) for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2, default=str) + "\n")
    print("\nmethod  batch  median s/edit  cpu s/edit  efficacy  paraphrase  neighbourhood  peak RSS MiB")
    for s in summaries:
        para, neigh = (f"{s[k]:.2f}" if s[k] is not None else "-" for k in ("paraphrase", "neighbourhood"))
        print(f"{s['method']:<7} {s['batch']:>5}  {s['median_s_per_edit']:>13.2f}  {s['median_cpu_s_per_edit']:>10.2f}  {s['efficacy']:>8.2f}  "
              f"{para:>10}  {neigh:>13}  {s['peak_rss_mib']:>12.0f}")


if __name__ == "__main__":
    main()
