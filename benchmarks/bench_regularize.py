"""Time the regularisers and the weight statistics on paper-sized MLP matrices, on CPU.

    .venv/bin/python benchmarks/bench_regularize.py                  # rank-1 updates (ROME)
    .venv/bin/python benchmarks/bench_regularize.py --update-rank 0  # full-rank updates
    .venv/bin/python benchmarks/bench_regularize.py --sizes 1536x576 --repeats 5

Shapes are the MLP output projections the editing methods touch: SmolLM2-135M
(1536 x 576, the embedded default), GPT-2 XL (6400 x 1600) and LLaMA-7B (11008 x 4096).
The update dW is a random matrix of the given rank (ROME's is rank one; MEMIT's has
rank up to the batch size); pca-K and svd-K costs depend on it, the others' do not.
Prints one line per (shape, operation): median and min seconds over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from editharm.regularize import apply_regulariser, derive_seed
from editharm.weightstats import tensor_stats

SIZES = {"smollm2-135m": (1536, 576), "gpt2-xl": (6400, 1600), "llama-7b": (11008, 4096)}
REGULARISERS = ["none", "rect-40", "random-40", "pca-40", "svd-40"]


def _parse_size(text: str) -> tuple[int, int]:
    m, _, n = text.partition("x")
    return int(m), int(n)


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", help="MxN shapes (default: the three models)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--update-rank", type=int, default=1, help="rank of dW; 0 = full rank")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--regularisers", nargs="*", default=REGULARISERS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ({s: _parse_size(s) for s in args.sizes} if args.sizes else SIZES)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"update rank {args.update_rank or 'full'}, {args.repeats} repeats")
    print(f"{'model':<14} {'shape':>12} {'operation':<14} {'median s':>9} {'min s':>8}  info")
    for label, (m, n) in sizes.items():
        g = torch.Generator().manual_seed(0)
        weight = torch.randn(m, n, generator=g) * 0.02
        if args.update_rank:
            r = args.update_rank
            delta = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) * 1e-3
        else:
            delta = torch.randn(m, n, generator=g) * 1e-3
        for name in args.regularisers:
            seed = derive_seed(0, 0, f"{label}.mlp.down_proj.weight")
            info = {}

            def run():
                info.update(apply_regulariser(name, delta, weight, seed)[1])

            times = _time(run, args.repeats)
            extra = {k: info[k] for k in ("rank", "svd") if k in info}
            print(f"{label:<14} {f'{m}x{n}':>12} {name:<14} {statistics.median(times):>9.3f} "
                  f"{min(times):>8.3f}  {extra or ''}", flush=True)
        edited = weight + delta
        times = _time(lambda: tensor_stats(weight, edited), args.repeats)
        print(f"{label:<14} {f'{m}x{n}':>12} {'tensor_stats':<14} "
              f"{statistics.median(times):>9.3f} {min(times):>8.3f}", flush=True)


if __name__ == "__main__":
    main()
