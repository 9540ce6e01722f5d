"""Benchmark MEMIT, PMET and AlphaEdit (and ROME) on a real model: seconds per edit, efficacy, peak memory.

    .venv/bin/python benchmarks/bench_methods.py [--methods memit pmet alphaedit] [--n 20] [--batch 20]

Batch methods edit the n CounterFact requests in operations of --batch requests (the
default: one operation of 20); seconds per edit is an operation's time divided by its
size. ROME, which edits one request at a time, runs request by request. Each batch
starts from the unedited model: its update is added, the batch is scored, and the
original weights are put back.

The key second moments every method needs are computed first, for all their layers in
one pass over the corpus (timed), and saved in --cov-dir for later runs. Each method
then runs in its own subprocess, so its peak resident memory (ru_maxrss, model
included) is its own. Hyperparameters: configs/methods/<method>/<family>.yaml, the
family read from the model folder's config.json (--hparams-dir changes the folder).
Second moments are cached in --cov-dir by layer and token count: give each model its own. The machine is shared: the load average is printed.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rome import corpus_texts, counterfact_requests, success  # noqa: E402

from editharm.methods import load_hparams, load_method  # noqa: E402
from editharm.methods.base import EditContext  # noqa: E402
from editharm.methods.covariance import collect_second_moments, load_second_moment, save_second_moment  # noqa: E402
from editharm.models import family_of, layout_for, load_model  # noqa: E402
from editharm.api import mirror_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cov_path(cov_dir: Path, layer: int, tokens: int) -> Path:
    return cov_dir / f"layer{layer}_tokens{tokens}.safetensors"


def ensure_second_moments(args, layers: list[int]) -> None:
    missing = [l for l in layers if not cov_path(args.cov_dir, l, args.cov_tokens).exists()]
    if not missing:
        print(f"second moments for layers {layers}: cached in {args.cov_dir}", flush=True)
        return
    model, tokenizer = load_model(args.model, device="cpu")
    layout = layout_for(model)
    t, c = time.perf_counter(), time.process_time()
    moments = collect_second_moments(model, tokenizer, layout, missing, corpus_texts(args.corpus), args.cov_tokens)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    for layer, m in moments.items():
        save_second_moment(cov_path(args.cov_dir, layer, args.cov_tokens), m,
                           {"layer": layer, "tokens": args.cov_tokens, "corpus": str(args.corpus)})
    print(f"second moments for layers {missing}, {args.cov_tokens} tokens, one pass: {seconds:.1f} s wall, "
          f"{cpu:.1f} s CPU (load {os.getloadavg()[0]:.1f})", flush=True)


def compare_second_moments(args, layers: list[int]) -> dict:
    """Time one pass for all `layers` against passes for single layers (nothing is cached)."""
    model, tokenizer = load_model(args.model, device="cpu")
    layout = layout_for(model)
    texts = corpus_texts(args.corpus)
    runs = []
    for group in [layers] + [[l] for l in args.cov_single or [max(layers)]]:
        load = os.getloadavg()
        t, c = time.perf_counter(), time.process_time()
        moments = collect_second_moments(model, tokenizer, layout, group, texts, args.cov_tokens, progress=False)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        runs.append({"layers": group, "tokens": args.cov_tokens, "wall_s": seconds, "cpu_s": cpu,
                     "load_before": load, "load_after": os.getloadavg()})
        print(json.dumps(runs[-1]), flush=True)
        if len(group) > 1:
            for layer, m in moments.items():
                save_second_moment(cov_path(args.cov_dir, layer, args.cov_tokens), m,
                                   {"layer": layer, "tokens": args.cov_tokens, "corpus": str(args.corpus)})
    return {"threads": torch.get_num_threads(), "runs": runs}


def hparams_file(args, method: str) -> Path:
    """configs/methods/<method>/<family>.yaml for the benchmarked model's family."""
    from transformers import AutoConfig

    return Path(args.hparams_dir) / method / f"{family_of(AutoConfig.from_pretrained(args.model))}.yaml"


def worker(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    method = load_method(args.worker)
    hp = load_hparams(hparams_file(args, args.worker), method.Hparams)
    model, tokenizer = load_model(args.model, device="cpu")
    layout = layout_for(model)
    layers = method.stats_layers(hp, layout) if hasattr(method, "stats_layers") else []
    covs = {l: load_second_moment(cov_path(args.cov_dir, l, args.cov_tokens))[0] for l in layers}
    context = EditContext(layout=layout, covariance=lambda layer: covs[layer], seed=0)
    requests = counterfact_requests(args.counterfact, args.n)
    size = args.batch if method.SUPPORTS_BATCH else 1
    batches = [requests[i:i + size] for i in range(0, len(requests), size)]
    per_edit, cpu_per_edit, steps, eff, para, neigh = [], [], [], [], [], []
    batch_wall, batch_cpu = [], []
    for batch in batches:
        t, c = time.perf_counter(), time.process_time()
        update = method.apply(model, tokenizer, batch, hp, context)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        batch_wall.append(seconds)
        batch_cpu.append(cpu)
        per_edit += [seconds / len(batch)] * len(batch)
        cpu_per_edit += [cpu / len(batch)] * len(batch)
        steps.append({k: v for k, v in update.info.items() if isinstance(v, (int, float, str))} or None)
        originals = {n: model.get_parameter(n).detach().clone() for n in update.deltas}
        with torch.no_grad():
            for n, d in update.deltas.items():
                model.get_parameter(n).add_(d)
        for req in batch:
            eff.append(success(model, tokenizer, [req.filled_prompt], req.target_new, req.target_true)[0])
            p = success(model, tokenizer, list(req.paraphrases), req.target_new, req.target_true)
            n_ = success(model, tokenizer, [x.prompt for x in req.locality], req.target_new, req.target_true)
            para.append(sum(p) / max(1, len(p)))
            neigh.append(sum(not x for x in n_) / max(1, len(n_)))
        with torch.no_grad():
            for n, v in originals.items():
                model.get_parameter(n).copy_(v)
        print(f"  {args.worker}: batch of {len(batch)} in {seconds:.1f} s, steps {update.info.get('steps')}", file=sys.stderr, flush=True)
    return {
        "method": args.worker, "batch": size, "edits": len(requests),
        "median_seconds_per_edit": statistics.median(per_edit),
        "median_cpu_seconds_per_edit": statistics.median(cpu_per_edit),
        "optimisation_steps": steps, "efficacy": sum(eff) / len(eff),
        "paraphrase": statistics.mean(para), "neighbourhood": statistics.mean(neigh),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(), "load": os.getloadavg()[0],
        "efficacy_count": sum(eff), "batch_seconds": batch_wall, "batch_cpu_seconds": batch_cpu,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["memit", "pmet", "alphaedit"])
    ap.add_argument("--model", default=str(ROOT / "cache" / "models" / "smollm2-135m"))
    ap.add_argument("--hparams-dir", default=str(ROOT / "configs" / "methods"))
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir, as the pipeline reads it)")
    ap.add_argument("--counterfact", help="ROME's CounterFact JSON (default: counterfact/counterfact_filtered.json in the mirror)")
    ap.add_argument("--corpus", help="tokenised WikiText file (default: wikitext2_tokenized/valid.txt in the mirror)")
    ap.add_argument("--cov-dir", type=Path, default=Path("/tmp/editharm_bench_cov"))
    ap.add_argument("--cov-tokens", type=int, default=20000)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cov-compare", action="store_true",
                    help="time one pass for all needed layers against single-layer passes, then stop")
    ap.add_argument("--cov-single", type=int, nargs="*", help="layers timed alone by --cov-compare (default: the deepest)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.counterfact = args.counterfact or str(mirror_file("counterfact/counterfact_filtered.json", args.mirror))
    args.corpus = args.corpus or str(mirror_file("wikitext2_tokenized/valid.txt", args.mirror))
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return

    needed = set()
    for name in args.methods:
        method = load_method(name)
        hp = load_hparams(hparams_file(args, name), method.Hparams)
        if hasattr(method, "stats_layers"):
            needed |= set(method.stats_layers(hp, None))
    if args.cov_compare:
        result = compare_second_moments(args, sorted(needed))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return
    ensure_second_moments(args, sorted(needed))

    rows = []
    for name in args.methods:
        cmd = [sys.executable, __file__, "--worker", name] + [a for a in (argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"\n{'method':10} {'batch':>5} {'s/edit':>7} {'cpu s':>7} {'efficacy':>8} {'paraphr':>8} {'neighb':>7} {'peak MB':>8} {'load':>5}")
    for r in rows:
        print(f"{r['method']:10} {r['batch']:5d} {r['median_seconds_per_edit']:7.2f} {r['median_cpu_seconds_per_edit']:7.2f} {r['efficacy']:8.3f} "
              f"{r['paraphrase']:8.3f} {r['neighbourhood']:7.3f} {r['peak_rss_mb']:8.0f} {r['load']:5.1f}")


if __name__ == "__main__":
    main()
