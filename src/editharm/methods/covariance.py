"""Second moment of the MLP keys, E[k k^T], over a text corpus (ROME's "mom2" statistic).

ROME, MEMIT, PMET and AlphaEdit all need, per edited layer, the uncentred second
moment of the inputs of the MLP down projection over generic text: it is the C of
ROME's constrained least squares and MEMIT's preservation term. Computing it is the
most expensive preparation step, so one pass over the corpus serves every requested
layer (hooks on all of them at once), and the forward pass stops after the deepest
one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from editharm import nethook
from editharm.io import atomic_path
from editharm.methods.prompts import right_pad

_TENSOR_KEY = "mom2"
_META_KEY = "editharm"


def _chunks(tokenizer, texts: Iterable[str], seq_len: int) -> Iterator[list[int]]:
    """Token chunks of at most seq_len, never crossing a text boundary, in corpus order."""
    for text in texts:
        if not text or not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids), seq_len):
            chunk = ids[start:start + seq_len]
            if chunk:
                yield chunk


def _batches(chunks: Iterator[list[int]], batch_size: int, n_tokens: int) -> Iterator[list[list[int]]]:
    """Group chunks into batches, trimming the last chunk so exactly n_tokens are used."""
    batch: list[list[int]] = []
    remaining = n_tokens
    for chunk in chunks:
        if remaining <= 0:
            break
        chunk = chunk[:remaining]
        remaining -= len(chunk)
        batch.append(chunk)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
    if remaining > 0:
        raise ValueError(
            f"the corpus holds only {n_tokens - remaining} tokens, fewer than the {n_tokens} requested for the "
            "covariance statistics; lower the token count in config (covariance.tokens) or use a larger corpus"
        )


def collect_second_moments(model, tokenizer, layout, layers: list[int], texts: Iterable[str], n_tokens: int,
                           seq_len: int = 256, batch_size: int = 8, progress: bool = True) -> dict[int, torch.Tensor]:
    """E[k k^T] of the mlp_down inputs at each layer in `layers`, over n_tokens corpus tokens.

    Tokens are taken in corpus order (deterministic); padding never counts. Sums are
    accumulated in float64 so the result does not depend on how tokens are batched
    beyond float32 rounding of each batch product; the result is float32 [d_ff, d_ff].
    """
    from tqdm.auto import tqdm

    if not layers:
        return {}
    layers = sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l < layout.n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for a model with {layout.n_layers} layers")
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    names = {l: layout.mlp_down.format(l) for l in layers}
    device = next(model.parameters()).device
    sums = {l: torch.zeros(layout.intermediate_size, layout.intermediate_size, dtype=torch.float64, device=device)
            for l in layers}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seen = 0
    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc=f"second moments, layers {layers}",
               file=sys.stderr, disable=not progress)
    try:
        with torch.no_grad(), nethook.capture(model, list(names.values()), inputs=True, outputs=False,
                                              stop_after=names[layers[-1]]) as rec:
            for batch in _batches(_chunks(tokenizer, texts, seq_len), batch_size, n_tokens):
                ids, mask = right_pad(batch, pad_id)
                # Right padding under causal attention: real tokens never attend to the pads
                # after them, so no attention mask is needed and positions start at 0.
                nethook.run_until_stopped(lambda: model(input_ids=ids.to(device), use_cache=False))
                mask = mask.to(device)
                for l, name in names.items():
                    keys = rec[name].input[mask].to(torch.float32)
                    sums[l] += (keys.T @ keys).to(torch.float64)
                n = int(mask.sum())
                seen += n
                bar.update(n)
    finally:
        bar.close()
    return {l: (s / seen).to(torch.float32).cpu() for l, s in sums.items()}


def save_second_moment(path: str | Path, matrix: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write one layer's statistic as safetensors; meta (layer, tokens, corpus, ...) goes in the header."""
    from safetensors.torch import save_file

    missing = [k for k in ("layer", "tokens", "corpus") if k not in meta]
    if missing:
        raise ValueError(f"second-moment metadata lacks {', '.join(missing)}")
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a second moment is a square matrix, got shape {tuple(matrix.shape)}")
    header = {_META_KEY: json.dumps(meta, sort_keys=True, default=str)}
    with atomic_path(path) as tmp:
        save_file({_TENSOR_KEY: matrix.detach().to(torch.float32).contiguous().cpu()}, str(tmp), metadata=header)


def load_second_moment(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a statistic written by save_second_moment: (matrix float32 [d_ff, d_ff], meta)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        if _TENSOR_KEY not in f.keys() or _META_KEY not in header:
            raise ValueError(f"{path} is not a second-moment statistic written by editharm (no {_TENSOR_KEY!r} tensor or metadata)")
        matrix = f.get_tensor(_TENSOR_KEY)
    return matrix, json.loads(header[_META_KEY])


def covariance_loader(stats_paths: dict[int, str]) -> Callable[[int], torch.Tensor]:
    """EditContext.covariance for statistics files {layer: path}: each read on first use, then kept
    (a method asks for the same layer at every edit; the files are hidden^2 floats each)."""
    cache: dict[int, torch.Tensor] = {}

    def covariance(layer: int) -> torch.Tensor:
        if layer not in cache:
            if layer not in stats_paths:
                raise KeyError(f"no covariance statistics for layer {layer}; the method's stats_layers() must list it")
            cache[layer] = load_second_moment(stats_paths[layer])[0]
        return cache[layer]

    return covariance


def solve_second_moment(second_moment: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """C^-1 rhs in float64 (one factorisation, no caching: for tests and one-off solves)."""
    return SecondMomentSolver(lambda layer: second_moment).solve(0, rhs)


class SecondMomentSolver:
    """C^-1 rhs per layer, with C's LU factorisation kept per (layer, device, dtype).

    Every edit at a layer solves with the same C; factoring it once per layer instead of
    once per edit saves an O(d_ff^3) step from each edit. The cache is keyed by what the
    statistic *is* (its layer) and where it lives, not by tensor identity: a method that
    moves C to its device for every edit would otherwise refactor it every time and keep
    stale copies. LU rather than Cholesky: a C stored in float32 can be indefinite by
    rounding in its smallest directions. The solve is always in float64; `dtype` in the
    key is that precision, so a float32 and a float64 copy of one C share one entry.
    """

    def __init__(self, load: Callable[[int], torch.Tensor]):
        self._load = load
        self._factors: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.factorisations = 0   # how many LU factorisations ran (for tests and diagnostics)

    def factors(self, layer: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (int(layer), torch.device(device), torch.float64)
        hit = self._factors.get(key)
        if hit is None:
            c = self._load(layer).to(device=device, dtype=torch.float64)
            lu, pivots, info = torch.linalg.lu_factor_ex(c)
            if int(info) != 0:
                raise ValueError(f"the key second moment of layer {layer} is singular (too few tokens for its "
                                 "size); compute it over more tokens (covariance.tokens in config)")
            self.factorisations += 1
            hit = self._factors[key] = (lu, pivots)
        return hit

    def solve(self, layer: int, rhs: torch.Tensor) -> torch.Tensor:
        """C_layer^-1 rhs (rhs a vector [d] or a matrix [d, n]), float64 on rhs's device."""
        lu, pivots = self.factors(layer, rhs.device)
        rhs64 = rhs.to(torch.float64)
        out = torch.linalg.lu_solve(lu, pivots, rhs64[:, None] if rhs64.dim() == 1 else rhs64)
        return out[:, 0] if rhs64.dim() == 1 else out
