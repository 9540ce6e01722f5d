"""Regularisers of an edit's weight update: RECT, Random, PCA (Gu et al. 2024), and the truncated SVD."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from editharm import regularize
from editharm.regularize import (
    Regulariser,
    apply_regulariser,
    derive_seed,
    kept_count,
    known_forms,
    parse_regulariser,
    pca_components,
    svd_rank,
    register_regulariser,
)

SHAPES = [(3, 4), (17, 5), (64, 33)]
PERCENTS = ["0.5", "12.5", "20", "40", "60", "80", "100"]


def _tied_pair(shape, seed):
    """dW and W from few integer values: many ties, zeros in both, W == 0 with dW != 0."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.randint(-3, 4, shape, generator=g).double()
    weight = torch.randint(-2, 3, shape, generator=g).double()
    return delta, weight


def _continuous_pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=g, dtype=torch.float64)
    weight.view(-1)[::7] = 0.0  # zeros in W: infinite relative change where dW != 0
    return torch.randn(shape, generator=g, dtype=torch.float64), weight


def _brute_force_rect(delta, weight, k):
    """The k flattened indices kept by RECT: sort by (-relative change, index)."""
    d, w = delta.flatten().tolist(), weight.flatten().tolist()
    rel = []
    for x, y in zip(d, w):
        if y == 0:
            rel.append(math.inf if x != 0 else 0.0)
        else:
            rel.append(abs(x) / abs(y))
    order = sorted(range(len(rel)), key=lambda i: (-rel[i], i))
    return set(order[:k])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("percent", PERCENTS)
@pytest.mark.parametrize("make", [_tied_pair, _continuous_pair])
def test_rect_keeps_exactly_the_top_k_by_relative_change(shape, percent, make):
    delta, weight = make(shape, seed=len(percent) * 100 + shape[0])
    before = delta.clone()
    out, info = apply_regulariser(f"rect-{percent}", delta, weight)
    numel = delta.numel()
    k = kept_count(percent, numel)
    assert k == min(numel, max(1, math.floor(Fraction(percent) / 100 * numel + Fraction(1, 2))))
    expected = _brute_force_rect(delta, weight, k)
    flat = out.flatten()
    for i in range(numel):
        if i in expected:
            assert flat[i] == delta.flatten()[i], i  # the original value, bit for bit
        else:
            assert flat[i] == 0, i
    assert info["kept_elements"] == k and info["kept_fraction"] == k / numel
    assert torch.equal(delta, before)  # the input is not modified
    assert out.dtype == delta.dtype and out.shape == delta.shape


def test_rect_prefers_lower_index_among_ties_and_infinite_changes_first():
    weight = torch.tensor([[2.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    delta = torch.tensor([[1.0, 0.0, 0.5], [2.0, 3.0, 0.5]])
    # relative change: [[0.5, 0 (0/0), 0.5], [0.5, inf, 0.5]]; keep 3 of 6 (rect-50).
    out, _ = apply_regulariser("rect-50", delta, weight)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 0.5], [0.0, 3.0, 0.0]]))


def test_rect_rounding_is_half_up_and_keeps_at_least_one():
    assert kept_count(50, 3) == 2        # 1.5 -> 2 (Python's round() would give 2 too)
    assert kept_count(50, 5) == 3        # 2.5 -> 3 (round() would give 2)
    assert kept_count("12.5", 4) == 1    # 0.5 -> 1
    assert kept_count("0.5", 10) == 1    # 0.05 -> 0, kept at least one
    assert kept_count(40, 1536 * 576) == 353894
    assert kept_count(100, 7) == 7


def test_rect_float32_and_bfloat16_keep_dtype():
    delta, weight = _continuous_pair((40, 30), seed=5)
    for dtype in (torch.float32, torch.bfloat16):
        out, info = apply_regulariser("rect-40", delta.to(dtype), weight.to(dtype))
        assert out.dtype == dtype
        assert int(torch.count_nonzero(out)) == info["kept_elements"] == 480


def test_random_is_reproducible_exact_count_and_seed_dependent():
    delta, weight = _continuous_pair((50, 40), seed=1)
    a, info = apply_regulariser("random-40", delta, weight, seed=123)
    b, _ = apply_regulariser("random-40", delta, weight, seed=123)
    c, _ = apply_regulariser("random-40", delta, weight, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kept = a != 0
    assert int(kept.sum()) == info["kept_elements"] == 800
    assert torch.equal(a[kept], delta[kept])
    # Not RECT in disguise: the chosen set ignores the relative change.
    rect, _ = apply_regulariser("rect-40", delta, weight)
    assert not torch.equal(kept, rect != 0)


def test_random_needs_a_seed():
    delta, weight = _continuous_pair((4, 4), seed=1)
    with pytest.raises(ValueError, match="derive_seed"):
        apply_regulariser("random-40", delta, weight)


def test_derive_seed_is_stable_and_sensitive_to_every_part():
    s = derive_seed(0, 3, "model.layers.4.mlp.down_proj.weight")
    # Pinned: changing the scheme would silently change every random-K result.
    assert s == 6347592966377567886
    assert 0 <= s < 2**63
    assert s != derive_seed(0, 4, "model.layers.4.mlp.down_proj.weight")
    assert s != derive_seed(1, 3, "model.layers.4.mlp.down_proj.weight")
    assert s != derive_seed(0, 3, "model.layers.5.mlp.down_proj.weight")
    assert derive_seed(1) != derive_seed("1")
    with pytest.raises(TypeError):
        derive_seed(1.5)


@pytest.mark.parametrize("m, n, percent, rank", [
    (1536, 576, 40, 167),    # floor(0.4 * 884736 / 2113) = floor(167.48)
    (6400, 1600, 40, 511),   # floor(0.4 * 10240000 / 8001) = floor(511.94)
    (6400, 1600, 20, 255),
    (3, 4, 10, 1),           # 0.15 -> at least one
    (10, 10, 100, 4),        # floor(100 / 21) = 4
])
def test_svd_rank_definition(m, n, percent, rank):
    assert svd_rank(percent, m, n) == rank
    assert rank * (m + n + 1) <= max(percent / 100 * m * n, m + n + 1)


def _best_rank_r(a, r):
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u[:, :r] * s[:r] @ vh[:r]


@pytest.mark.parametrize("shape, percent", [((60, 40), 80), ((200, 100), 40), ((30, 70), 20)])
def test_svd_of_full_rank_update_is_the_best_rank_r_approximation(shape, percent):
    delta, weight = _continuous_pair(shape, seed=7)
    out, info = apply_regulariser(f"svd-{percent}", delta, weight)
    r = svd_rank(percent, *shape)
    assert info["rank"] == r and info["svd"] == "full"
    assert int(torch.linalg.matrix_rank(out)) == r
    torch.testing.assert_close(out, _best_rank_r(delta, r), rtol=1e-10, atol=1e-10)
    assert info["kept_elements"] == r * (shape[0] + shape[1] + 1)


def test_svd_of_low_rank_update_takes_the_exact_fast_path():
    g = torch.Generator().manual_seed(3)
    m, n, true_rank = 300, 200, 3
    delta = torch.randn(m, true_rank, generator=g, dtype=torch.float64) @ torch.randn(
        true_rank, n, generator=g, dtype=torch.float64)
    weight = torch.randn(m, n, generator=g, dtype=torch.float64)
    # r = floor(0.4 * 60000 / 501) = 47 >= 3: the best rank-47 approximation is dW itself.
    out, info = apply_regulariser("svd-40", delta, weight)
    assert info["svd"] == "sketch" and info["rank"] == 47
    torch.testing.assert_close(out, delta, rtol=1e-10, atol=1e-10)
    # And a rank below the update's: svd-0.5 gives r = 1, the leading singular triple.
    out1, info1 = apply_regulariser("svd-0.5", delta, weight)
    assert info1["rank"] == 1 and info1["svd"] == "sketch"
    torch.testing.assert_close(out1, _best_rank_r(delta, 1), rtol=1e-9, atol=1e-9)


def test_svd_float32_rank_one_update_is_unchanged():
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(1536, 1, generator=g) @ torch.randn(1, 576, generator=g)
    out, info = apply_regulariser("svd-40", delta, torch.randn(1536, 576, generator=g))
    assert out.dtype == torch.float32 and info["svd"] == "sketch"
    torch.testing.assert_close(out, delta, rtol=1e-4, atol=1e-5 * float(delta.abs().max()))


def test_pca_writes_the_component_scores_of_the_centred_columns_into_the_first_columns():
    """Gu et al.'s PCA by hand: rows are samples, columns features. Column means (1, 5) are removed,
    leaving one principal axis (0, 1) (largest entry positive) with scores (-3, -1, 1, 3); 50% of
    2 columns is one component, written into column 0. The result is not a reconstruction of dW."""
    delta = torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0], [1.0, 8.0]], dtype=torch.float64)
    weight = torch.ones_like(delta)
    out, info = apply_regulariser("pca-50", delta, weight)
    want = torch.tensor([[-3.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert info["components"] == 1 and info["kept_elements"] == 4 and info["kept_fraction"] == 0.5
    # Stored the other way round ([hidden, d_ff] as nn.Linear keeps a down projection), the longer
    # side is still the samples, so the result is the transpose.
    out_t, _ = apply_regulariser("pca-50", delta.T.contiguous(), weight.T.contiguous())
    torch.testing.assert_close(out_t, want.T, rtol=0, atol=1e-12)


def test_pca_of_a_rank_two_update_matches_the_eigendecomposition_of_its_covariance():
    """Scores = X_c V_r with V_r the top-r eigenvectors of X_c^T X_c, each oriented with its largest entry
    positive; 40% of 10 columns = 4 components, the columns past the update's rank are zero."""
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(40, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 10, generator=g, dtype=torch.float64)
    out, info = apply_regulariser("pca-40", delta, torch.randn(40, 10, generator=g, dtype=torch.float64))
    centred = delta - delta.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    top = vectors[:, values.argsort(descending=True)[:2]]
    top = top * torch.sign(top.gather(0, top.abs().argmax(0)[None]))
    assert info["components"] == 4
    torch.testing.assert_close(out[:, :2], centred @ top, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[:, 2:], torch.zeros(40, 8, dtype=torch.float64), rtol=0, atol=1e-9)


def test_pca_changes_a_rank_one_update_unlike_svd():
    """The reason pca-K exists in Gu's sense: on ROME's rank-one update it is not the identity."""
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(1536, 1, generator=g) @ torch.randn(1, 576, generator=g)
    weight = torch.randn(1536, 576, generator=g)
    out, info = apply_regulariser("pca-40", delta, weight)
    assert info["components"] == pca_components(40, 1536, 576) == 230
    assert out.dtype == torch.float32 and out.shape == delta.shape
    assert int(torch.count_nonzero(out[:, 230:])) == 0
    assert not torch.allclose(out, delta, atol=1e-3 * float(delta.abs().max()))
    same, _ = apply_regulariser("svd-40", delta, weight)
    torch.testing.assert_close(same, delta, rtol=1e-4, atol=1e-5 * float(delta.abs().max()))


def test_none_returns_the_update_unchanged():
    delta, weight = _continuous_pair((5, 6), seed=2)
    out, info = apply_regulariser(parse_regulariser("none"), delta, weight)
    assert out is delta and info["kept_fraction"] == 1.0 and info["norm_fraction"] == 1.0


@pytest.mark.parametrize("name, kind, percent", [
    ("none", "none", None), ("rect-40", "rect", Fraction(40)),
    ("random-12.5", "random", Fraction(25, 2)), ("pca-0.5", "pca", Fraction(1, 2)), ("svd-40", "svd", Fraction(40)),
    ("rect-100", "rect", Fraction(100)),
])
def test_parse_round_trips(name, kind, percent):
    reg = parse_regulariser(name)
    assert reg == Regulariser(kind, percent)
    assert reg.name == name == str(reg)


def test_programmatic_construction_normalises_the_percentage():
    assert Regulariser("rect", 40).name == "rect-40"
    assert Regulariser("random", 0.1).name == "random-0.1"
    assert Regulariser("pca", "12.50") == parse_regulariser("pca-12.5")
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        Regulariser("rect", 0)


@pytest.mark.parametrize("bad", [
    "rect", "rect-0", "rect-101", "rect-040", "rect-40.0", "rect-4e1", "rect--5", "rect-abc",
    "none-40", "RECT-40", "rect_40", "lora-40", "", " rect-40", 40, None,
])
def test_parse_errors_list_the_allowed_forms(bad):
    with pytest.raises(ValueError) as e:
        parse_regulariser(bad)
    for form in ("none", "rect-K", "random-K", "pca-K", "svd-K", "(0, 100]"):
        assert form in str(e.value)


def test_apply_rejects_mismatched_shapes_and_non_finite_updates():
    delta, weight = _continuous_pair((4, 6), seed=1)
    with pytest.raises(ValueError, match="transposed"):
        apply_regulariser("rect-40", delta, weight.T)
    bad = delta.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        apply_regulariser("rect-40", bad, weight)


def test_a_new_regulariser_is_one_registered_function(monkeypatch):
    monkeypatch.setattr(regularize, "_KINDS", dict(regularize._KINDS))

    @register_regulariser("scale", takes_percent=True, summary="multiply dW by K/100")
    def _scale(delta, weight, percent, seed):
        return delta * float(percent / 100), {"kept_elements": delta.numel()}

    assert "scale-K" in known_forms()
    out, info = apply_regulariser("scale-50", torch.ones(2, 2), torch.ones(2, 2))
    assert torch.equal(out, torch.full((2, 2), 0.5)) and info["regulariser"] == "scale-50"
    with pytest.raises(ValueError, match="already registered"):
        register_regulariser("rect", takes_percent=True, summary="x")(_scale)


@pytest.mark.parametrize("bad", ["rect-abc", "rect-140", "pca-", "lora-40"])
def test_config_validation_gives_every_bad_regulariser_the_allowed_forms(bad):
    """One grammar: the config check defers to parse_regulariser, so no bad name gets a bare pattern."""
    import copy
    from pathlib import Path

    import yaml

    from editharm.config import validate_config

    path = Path(__file__).resolve().parents[1] / "configs" / "ci.yaml"
    config = copy.deepcopy(yaml.safe_load(path.read_text()))
    experiments = config["experiments"]
    first = experiments[0] if isinstance(experiments, list) else next(iter(experiments.values()))
    first["regularisers"] = [bad]
    with pytest.raises(Exception) as e:
        validate_config(config, str(path))
    for form in ("rect-K", "random-K", "pca-K", "svd-K", "(0, 100]"):
        assert form in str(e.value)
    assert "^(none" not in str(e.value)
