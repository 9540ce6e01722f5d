"""Regularisers of one edit operation's weight update dW, applied before dW is added.

Following Gu et al. 2024 ("Model Editing Harms General Abilities of Large Language
Models: Regularization to the Rescue", EMNLP), an editing method's update dW of a
weight W is sparsified or compressed before ``W += dW``. Names as they appear in
config (and in result paths), K a percentage in (0, 100]:

``none``
    dW unchanged.
``rect-K``
    RECT: keep the K% elements of dW with the largest relative change
    delta = |dW| / |W|, zero the rest. An element with W == 0 and dW != 0 has infinite
    relative change (it is always among the first kept); W == 0 and dW == 0 counts as
    0 (no change), the same convention as `editharm.weightstats`, so an untouched
    element never takes a slot from a real change.
``random-K``
    K% of the elements chosen uniformly at random (without replacement), the rest
    zeroed: the paper's "Random" baseline. The chosen elements are the k largest of
    float64 uniform keys drawn on the CPU from a torch.Generator seeded with `seed`
    (derive it with `derive_seed(global seed, edit index, parameter name)`), so a
    seed picks the same elements on every machine and device. (The paper's code zeroes
    each element independently with probability 1 - K/100; we keep exactly K%, as for
    RECT, so the two differ only in which elements are kept.)
``pca-K``
    Gu et al.'s "PCA k%" baseline as their code runs it (JasonForJoy/Model-Editing-Hurt,
    the commented block in easyeditor/models/rome/rome_main.py): principal component
    analysis of dW with its rows as samples and its columns as features, keeping
    r = K% of the columns as components (round half up, within [1, min(rows, cols)]).
    The columns are centred, the component scores X_c V_r ([rows, r]) are written into
    the first r columns of a zero matrix of dW's shape, and the rest stays zero. So
    exactly K% of the elements can be non-zero, but the result is *not* an
    approximation of dW: it is a compressed code of it put where dW's first columns
    were. Orientation: their matrix was GPT-2 XL's stored c_proj weight, [6400, 1600]
    (d_ff rows, hidden columns); here the longer side is always the rows, which gives
    that orientation for every model's MLP down projection whatever its storage layout.
    Sign: each principal axis is oriented so that its largest-magnitude entry is
    positive (scikit-learn >= 1.5's convention; older versions fixed the sign from the
    scores instead, which can flip a component's sign). Computed exactly by SVD
    (float64), with the low-rank fast path below.
``svd-K``
    The rank-r truncated SVD of dW, U_r S_r V_r^T, with r chosen so that its factors
    U_r [m, r], S_r [r] and V_r [n, r] hold at most K% of dW's m*n elements:

        r = max(1, floor(K/100 * m*n / (m + n + 1)))

    (r < min(m, n) always, since m*n / (m + n + 1) < min(m, n)). By Eckart-Young this
    is the best rank-r approximation of dW in Frobenius norm, i.e. the best
    approximation storable in the same budget as K% of dW's elements. Not in either
    paper; it answers what a faithful low-rank compression at RECT's budget does. A
    rank-one update (ROME) is left unchanged by svd-K for every K, since r >= 1.

Counting (exact, no floating-point surprises): rect-K and random-K keep exactly
k = floor(K/100 * numel + 1/2) elements (round half up), clamped to [1, numel], with
K parsed as an exact decimal. Ties in RECT's ranking are broken by the flattened
(row-major) index, lower index kept first, so the result is deterministic.

A new regulariser is one function registered with `register_regulariser`; parsing,
error messages and `known_forms()` (the allowed name forms, e.g. for a config check)
pick it up from the registry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "Regulariser",
    "RegulariserKind",
    "apply_regulariser",
    "derive_seed",
    "kept_count",
    "known_forms",
    "parse_regulariser",
    "pca_components",
    "svd_rank",
    "register_regulariser",
    "relative_change",
]

# fn(delta, weight, percent, seed) -> (regularised delta, info). percent is None for
# kinds that take none; seed is None unless the caller provided one.
RegulariserFn = Callable[[torch.Tensor, torch.Tensor, "Fraction | None", "int | None"],
                         "tuple[torch.Tensor, dict[str, Any]]"]


@dataclass(frozen=True)
class RegulariserKind:
    name: str
    takes_percent: bool
    summary: str
    fn: RegulariserFn


_KINDS: dict[str, RegulariserKind] = {}

# K is written as a canonical decimal (no leading/trailing zeros, no sign, no exponent)
# so that a name round-trips exactly: "rect-40" and "rect-40.0" would otherwise be two
# wildcard values, two result folders, for one experiment.
_KIND = r"[a-z][a-z0-9_]*"
_PERCENT = r"(?:[1-9][0-9]*|0)(?:\.[0-9]*[1-9])?"
_NAME_RE = re.compile(rf"(?P<kind>{_KIND})(?:-(?P<percent>[^-]+))?")  # K loose here: parsed for a precise message
_PERCENT_RE = re.compile(_PERCENT)
# The syntax of a well-formed name, for the workflow's {reg} wildcard. parse_regulariser also
# checks what a pattern cannot: that the kind is registered and takes (or not) a K in (0, 100].
NAME_PATTERN = rf"{_KIND}(?:-{_PERCENT})?"


def register_regulariser(name: str, *, takes_percent: bool, summary: str):
    """Decorator: register `fn(delta, weight, percent, seed)` as regulariser kind `name`."""
    if not re.fullmatch(_KIND, name):
        raise ValueError(f"regulariser kind {name!r} must be lower-case letters, digits, _")

    def decorate(fn: RegulariserFn) -> RegulariserFn:
        if name in _KINDS:
            raise ValueError(f"regulariser kind {name!r} is already registered")
        _KINDS[name] = RegulariserKind(name, takes_percent, summary, fn)
        return fn

    return decorate


def known_forms() -> list[str]:
    """The allowed name forms, e.g. ['none', 'rect-K', ...], for messages and schemas."""
    return [k.name + ("-K" if k.takes_percent else "") for k in _KINDS.values()]


def _allowed_message() -> str:
    lines = [f"  {form}: {kind.summary}" for form, kind in zip(known_forms(), _KINDS.values())]
    return ("allowed forms:\n" + "\n".join(lines) + "\nK is a percentage in (0, 100], written "
            "as a plain decimal without leading or trailing zeros (40, 12.5, 0.5)")


def _format_percent(p: Fraction) -> str:
    with localcontext() as ctx:
        ctx.prec = 60
        text = format((Decimal(p.numerator) / Decimal(p.denominator)).normalize(), "f")
    return text


@dataclass(frozen=True)
class Regulariser:
    """A parsed regulariser: its kind and, for kinds that take one, K in percent (exact)."""

    kind: str
    percent: Fraction | None = None

    def __post_init__(self):
        spec = _KINDS.get(self.kind)
        if spec is None:
            raise ValueError(f"unknown regulariser kind {self.kind!r}; {_allowed_message()}")
        if spec.takes_percent:
            if self.percent is None:
                raise ValueError(f"regulariser {self.kind!r} needs a percentage K; "
                                 f"{_allowed_message()}")
            # str() first: Fraction(0.1) is the binary float, Fraction("0.1") is 1/10.
            p = self.percent
            pct = Fraction(str(p)) if isinstance(p, float) else Fraction(p)
            if not 0 < pct <= 100:
                raise ValueError(f"regulariser {self.kind!r}: K = {float(pct)} is outside "
                                 f"(0, 100]; {_allowed_message()}")
            object.__setattr__(self, "percent", pct)
        elif self.percent is not None:
            raise ValueError(f"regulariser {self.kind!r} takes no percentage; "
                             f"{_allowed_message()}")

    @property
    def name(self) -> str:
        """Canonical config name; parse_regulariser(r.name) == r."""
        if self.percent is None:
            return self.kind
        return f"{self.kind}-{_format_percent(self.percent)}"

    def __str__(self) -> str:
        return self.name


def parse_regulariser(name: str) -> Regulariser:
    """Parse a config name ('none', 'rect-40', 'random-12.5', 'pca-40', 'svd-40')."""
    if not isinstance(name, str):
        raise ValueError(f"regulariser must be a string, got {name!r}; {_allowed_message()}")
    m = _NAME_RE.fullmatch(name)
    if m is None or m["kind"] not in _KINDS:
        raise ValueError(f"unknown regulariser {name!r}; {_allowed_message()}")
    kind, text = m["kind"], m["percent"]
    if _KINDS[kind].takes_percent:
        if text is None or not _PERCENT_RE.fullmatch(text):
            raise ValueError(f"regulariser {name!r}: expected {kind}-K with K a plain decimal "
                             f"percentage; {_allowed_message()}")
        return Regulariser(kind, Fraction(text))
    if text is not None:
        raise ValueError(f"regulariser {name!r}: {kind!r} takes no percentage; "
                         f"{_allowed_message()}")
    return Regulariser(kind)


def derive_seed(*parts: str | int) -> int:
    """A stable seed in [0, 2**63) from e.g. (global seed, edit index, parameter name).

    sha256 of a JSON encoding, so the value is the same across processes, machines and
    Python versions (Python's hash() of a str is salted per process). The type is part
    of the encoding, so derive_seed(1) != derive_seed("1").
    """
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (str, int)):
            raise TypeError(f"derive_seed takes str and int parts, got {p!r}")
    digest = hashlib.sha256(json.dumps(list(parts), separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def kept_count(percent: Fraction | int | float | str, numel: int) -> int:
    """Elements kept by rect-K / random-K: floor(K/100 * numel + 1/2), within [1, numel]."""
    k = Fraction(str(percent)) if isinstance(percent, float) else Fraction(percent)
    return min(numel, max(1, int(k * numel / 100 + Fraction(1, 2))))


def svd_rank(percent: Fraction | int | float | str, m: int, n: int) -> int:
    """Rank r of svd-K for an m x n update: max(1, floor(K/100 * m*n / (m + n + 1)))."""
    k = Fraction(str(percent)) if isinstance(percent, float) else Fraction(percent)
    return min(min(m, n), max(1, int(k * m * n / (100 * (m + n + 1)))))


def pca_components(percent: Fraction | int | float | str, rows: int, cols: int) -> int:
    """Components r of pca-K for a [rows, cols] update (rows >= cols): K% of the columns, round half up, >= 1."""
    return min(rows, cols, kept_count(percent, cols))


def relative_change(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|dW| / |W| elementwise, in at least float32; x/0 = inf for x != 0, 0/0 = 0.

    Inputs must be finite (`apply_regulariser` checks): a NaN would read as 0.
    """
    dtype = torch.promote_types(torch.promote_types(delta.dtype, weight.dtype), torch.float32)
    rel = delta.to(dtype).abs()
    rel.div_(weight.to(dtype).abs())
    # x / 0 is already inf for x > 0; only 0 / 0 = nan needs fixing. In place, because on
    # a 7B model's MLP matrix every temporary is 180 MB and a noticeable share of the time.
    return rel.nan_to_num_(nan=0.0, posinf=torch.inf)


def _finite(x: torch.Tensor) -> bool:
    # One reduction instead of isfinite(x).all(), which is ~30x slower on large matrices:
    # a sum is finite iff every term is, short of magnitudes near the dtype's limit.
    return bool(torch.isfinite(x.sum(dtype=torch.promote_types(x.dtype, torch.float32))))


def _check(delta: torch.Tensor, weight: torch.Tensor) -> None:
    if delta.shape != weight.shape:
        raise ValueError(f"update shape {tuple(delta.shape)} differs from weight shape "
                         f"{tuple(weight.shape)} (GPT-2 Conv1D weights are stored transposed: "
                         "match the update to the stored weight first)")
    if delta.numel() == 0:
        raise ValueError("empty update")
    # A diverged edit must fail here, not be silently ranked (topk puts NaN first).
    if not _finite(delta):
        raise ValueError("update contains NaN or infinite values")
    if not _finite(weight):
        raise ValueError("weight contains NaN or infinite values")


def _keep(delta: torch.Tensor, flat_mask: torch.Tensor) -> torch.Tensor:
    return torch.where(flat_mask.view(delta.shape), delta, 0.0)


def _norm(x: torch.Tensor) -> float:
    return torch.linalg.vector_norm(x, dtype=torch.promote_types(x.dtype, torch.float32)).item()


def _norm_fraction(out: torch.Tensor, delta: torch.Tensor) -> float:
    if out is delta:
        return 1.0
    full = _norm(delta)
    return 1.0 if full == 0 else _norm(out) / full


@register_regulariser("none", takes_percent=False, summary="the update unchanged")
def _none(delta, weight, percent, seed):
    return delta, {"kept_elements": delta.numel()}


def _top_k_mask(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Mask of the k largest of 1-D `scores` (lower index first among equal scores), and
    the k-th largest score.

    The k-th largest value is the threshold: everything above it is kept, and of the
    elements equal to it, the lowest indices fill the remaining slots. This is O(n) and
    deterministic, unlike topk's unspecified order among ties.
    """
    n = scores.numel()
    if scores.device.type == "cpu":
        # numpy's introselect is ~15x faster than torch.kthvalue on CPU (0.1 s vs 1.6 s
        # for a 7B model's 45M-element MLP matrix).
        threshold = float(np.partition(scores.detach().numpy(), n - k)[n - k])
    else:
        threshold = float(scores.kthvalue(n - k + 1).values)
    mask = scores > threshold
    missing = k - int(torch.count_nonzero(mask))
    if missing > 0:
        tied = torch.nonzero(scores == threshold).flatten()[:missing]
        mask[tied] = True
    return mask, threshold


@register_regulariser("rect", takes_percent=True,
                      summary="keep the top K% elements by relative change |dW|/|W|")
def _rect(delta, weight, percent, seed):
    numel = delta.numel()
    k = kept_count(percent, numel)
    if k == numel:
        return delta, {"kept_elements": k}
    rel = relative_change(delta, weight).flatten()
    mask, threshold = _top_k_mask(rel, k)
    return _keep(delta, mask), {"kept_elements": k, "threshold": threshold}


@register_regulariser("random", takes_percent=True,
                      summary="keep K% of the elements uniformly at random (seeded)")
def _random(delta, weight, percent, seed):
    if seed is None:
        raise ValueError("random-K needs a seed; derive one with derive_seed(global seed, "
                         "edit index, parameter name)")
    numel = delta.numel()
    k = kept_count(percent, numel)
    if k == numel:
        return delta, {"kept_elements": k}
    # The k largest of i.i.d. uniform keys are a uniformly random k-subset; float64 keys
    # make a tie (broken by index) practically impossible. Drawn on the CPU so the same
    # seed picks the same elements on every device; faster than randperm at 45M.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    keys = torch.rand(numel, generator=gen, dtype=torch.float64)
    mask, _ = _top_k_mask(keys, k)
    return _keep(delta, mask.to(delta.device)), {"kept_elements": k}


def _truncated_svd(a: torch.Tensor, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The leading r singular triples of `a` (fewer when rank(a) < r): (U [m, r'], S [r'], Vh [r', n], path).

    Exact, with a fast path for low-rank `a`. Editing updates are usually of low rank
    (ROME: 1; MEMIT: at most the batch size), and a full SVD of an 11008 x 4096 matrix
    takes about two minutes on two CPU cores. So first project `a` onto the range of a
    random sketch with w columns: if that reproduces `a` to rounding error, rank(a) <= w
    and the SVD of the small projected w x n matrix is the SVD of `a` (no approximation
    beyond rounding; triples past rank(a) are rounding noise). Narrow sketches
    are tried first (cheap; they catch rank-one and small-batch updates), then one just
    wider than r; otherwise the full SVD.
    """
    m, n = a.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = torch.linalg.vector_norm(a)
    # Widths 32, 128, 512, ... then r + 8: a failed try costs a quarter of the next,
    # and a rank-64 (MEMIT batch) update need not pay for a sketch of width r + 8.
    widths = [w for w in (32 * 4**i for i in range(8)) if w < r + 8] + [r + 8]
    for width in widths:
        # Past half the short side a sketch costs about as much as the SVD it avoids.
        if width >= min(m, n) // 2:
            break
        omega = torch.randn(n, width, generator=gen, dtype=a.dtype).to(a.device)
        q, _ = torch.linalg.qr(a @ omega)
        b = q.T @ a
        # Rounding in q @ b grows like sqrt(width); 16x that is still far below any
        # genuine residual of a matrix whose rank exceeds the sketch.
        tol = 16 * width ** 0.5 * torch.finfo(a.dtype).eps * scale
        if torch.linalg.vector_norm(a - q @ b) <= tol:
            # rank(a) <= width; if width < r the whole of `a` is its best rank-r
            # approximation, which slicing [:r] of the width components gives.
            u, s, vh = torch.linalg.svd(b, full_matrices=False)
            return q @ u[:, :r], s[:r], vh[:r], "sketch"
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u[:, :r], s[:r], vh[:r], "full"


@register_regulariser("pca", takes_percent=True,
                      summary="Gu et al.'s PCA k%: scores of K% of the columns as principal components, "
                              "written into dW's first columns (not a reconstruction of dW)")
def _pca(delta, weight, percent, seed):
    if delta.ndim != 2:
        raise ValueError(f"pca-K needs a matrix update, got shape {tuple(delta.shape)}")
    # Rows are the samples; the longer side, as in Gu et al.'s [6400, 1600] GPT-2 XL matrix.
    transposed = delta.shape[0] < delta.shape[1]
    x = (delta.T if transposed else delta).to(torch.float64)
    rows, cols = x.shape
    r = pca_components(percent, rows, cols)
    centred = x - x.mean(dim=0, keepdim=True)
    u, s, vh, path = _truncated_svd(centred, r, 0 if seed is None else seed)
    # Orient each principal axis so that its largest-magnitude entry is positive.
    pivot = vh.abs().argmax(dim=1)
    signs = torch.sign(vh.gather(1, pivot[:, None]).squeeze(1))
    signs[signs == 0] = 1
    scores = u * (s * signs)
    out = torch.zeros_like(x)
    out[:, :scores.shape[1]] = scores
    out = (out.T if transposed else out).to(delta.dtype)
    return out, {"components": r, "kept_elements": rows * r, "svd": path}


@register_regulariser("svd", takes_percent=True,
                      summary="rank-r truncated SVD whose factors hold at most K% of the "
                              "elements: r = max(1, floor(K/100 * m*n / (m+n+1)))")
def _svd(delta, weight, percent, seed):
    if delta.ndim != 2:
        raise ValueError(f"svd-K needs a matrix update, got shape {tuple(delta.shape)}")
    m, n = delta.shape
    r = svd_rank(percent, m, n)
    # SVD has no half-precision kernels; float32 is enough for float32/bf16/fp16 weights.
    work = delta.to(torch.promote_types(delta.dtype, torch.float32))
    u, s, vh, path = _truncated_svd(work, r, 0 if seed is None else seed)
    return (u * s @ vh).to(delta.dtype), {
        "rank": r,
        "kept_elements": r * (m + n + 1),
        "svd": path,
    }


def apply_regulariser(reg: Regulariser | str, delta: torch.Tensor, weight: torch.Tensor,
                      seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Regularise one edit operation's update `delta` of the current `weight`.

    Returns the regularised update (same shape, dtype and device as `delta`; `delta`
    itself is not modified, but is returned as is when nothing is dropped) and an info
    dict of plain numbers and strings: regulariser (canonical name), numel,
    kept_elements, kept_fraction (kept elements, or for svd the factors' element count,
    over numel), norm_fraction (||out||_F / ||dW||_F), and per kind: rank and svd
    ("sketch" or "full") for svd, components and svd for pca, threshold (the smallest
    kept relative change, may be inf) for rect.
    `seed` is required by random-K; derive it with `derive_seed`.
    """
    if isinstance(reg, str):
        reg = parse_regulariser(reg)
    _check(delta, weight)
    out, info = _KINDS[reg.kind].fn(delta, weight, reg.percent, seed)
    numel = delta.numel()
    info = {
        "regulariser": reg.name,
        "numel": numel,
        "kept_fraction": info["kept_elements"] / numel,
        "norm_fraction": _norm_fraction(out, delta),
        **info,
    }
    return out, info
