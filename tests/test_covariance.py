"""Key second moments: one pass for many layers, equal to a hand computation, saved and loaded."""

from __future__ import annotations

import pytest
import torch

from editharm.methods.covariance import collect_second_moments, load_second_moment, save_second_moment
from editharm.models import layout_for, random_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Knowledge editing changes what a language model says about one fact.",
    "Short.",
    "A third line of text, long enough to be split into several chunks of tokens.",
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=16, layers=3, heads=2)
    return model, tok, layout_for(model)


def _hand_moment(model, tok, layout, layer, texts, n_tokens, seq_len):
    """Collect keys one chunk at a time, unbatched, and average k k^T."""
    keys = []
    module = model.get_submodule(layout.mlp_down.format(layer))
    handle = module.register_forward_hook(lambda m, a, o: keys.append(a[0][0].detach()))
    left = n_tokens
    try:
        with torch.no_grad():
            for text in texts:
                if not text.strip():
                    continue
                ids = tok(text)["input_ids"]
                for s in range(0, len(ids), seq_len):
                    chunk = ids[s:s + seq_len][:left]
                    if not chunk:
                        break
                    model(input_ids=torch.tensor([chunk]))
                    left -= len(chunk)
    finally:
        handle.remove()
    k = torch.cat(keys).double()
    assert k.shape[0] == n_tokens
    return (k.T @ k / k.shape[0]).float()


def test_equals_hand_computation(tiny):
    model, tok, layout = tiny
    got = collect_second_moments(model, tok, layout, [1], TEXTS, n_tokens=150, seq_len=32, batch_size=3, progress=False)
    want = _hand_moment(model, tok, layout, 1, TEXTS, 150, 32)
    assert got[1].dtype == torch.float32
    assert got[1].shape == (layout.intermediate_size, layout.intermediate_size)
    assert torch.allclose(got[1], want, atol=1e-5, rtol=1e-4)


def test_one_pass_for_several_layers_equals_per_layer(tiny):
    model, tok, layout = tiny
    together = collect_second_moments(model, tok, layout, [2, 0], TEXTS, n_tokens=120, seq_len=24, progress=False)
    assert sorted(together) == [0, 2]
    for layer in (0, 2):
        alone = collect_second_moments(model, tok, layout, [layer], TEXTS, n_tokens=120, seq_len=24, progress=False)
        assert torch.allclose(together[layer], alone[layer], atol=1e-6)


def test_deterministic_and_independent_of_batch_size(tiny):
    model, tok, layout = tiny
    a = collect_second_moments(model, tok, layout, [1], TEXTS, n_tokens=100, seq_len=16, batch_size=1, progress=False)
    b = collect_second_moments(model, tok, layout, [1], TEXTS, n_tokens=100, seq_len=16, batch_size=5, progress=False)
    c = collect_second_moments(model, tok, layout, [1], TEXTS, n_tokens=100, seq_len=16, batch_size=5, progress=False)
    assert torch.equal(b[1], c[1])
    assert torch.allclose(a[1], b[1], atol=1e-5, rtol=1e-4)


def test_too_small_corpus_is_an_error(tiny):
    model, tok, layout = tiny
    with pytest.raises(ValueError, match="fewer than"):
        collect_second_moments(model, tok, layout, [0], TEXTS, n_tokens=10**6, progress=False)


def test_save_and_load_round_trip(tmp_path):
    m = torch.randn(6, 6)
    m = m @ m.T
    path = tmp_path / "stats" / "layer3.safetensors"
    save_second_moment(path, m, {"layer": 3, "tokens": 1000, "corpus": "wikitext2"})
    got, meta = load_second_moment(path)
    assert torch.equal(got, m)
    assert meta == {"layer": 3, "tokens": 1000, "corpus": "wikitext2"}
    assert [p.name for p in path.parent.iterdir()] == ["layer3.safetensors"]  # no temporary left behind


def test_save_requires_metadata(tmp_path):
    with pytest.raises(ValueError, match="corpus"):
        save_second_moment(tmp_path / "x.safetensors", torch.eye(3), {"layer": 0, "tokens": 5})
