"""nethook's output replacement: the persistent kind (GRACE's codebook) and the block kind (MEND)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from editharm import nethook


class _Pair(nn.Module):
    """A module returning a tuple, as Hugging Face decoder layers do: (hidden, something else)."""

    def forward(self, x):
        return x * 2, torch.ones(1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))


def test_replace_output_stays_until_its_handle_is_removed() -> None:
    model = _model()
    x = torch.randn(5, 4)
    plain = model(x)
    seen = []

    def shift(inp, out):
        seen.append(inp)
        return out + 1.0

    handle = nethook.replace_output(model, "0", shift)
    first, second = model(x), model(x)
    # Every forward is changed, not just the next one, and fn saw the module's input.
    # (model[0] is computed by hand: calling it would run the hook too.)
    expected = model[1](torch.nn.functional.linear(x, model[0].weight, model[0].bias) + 1.0)
    assert torch.allclose(first, expected) and torch.allclose(second, expected)
    assert len(seen) == 2 and torch.equal(seen[0], x)
    handle.remove()
    assert torch.equal(model(x), plain)


def test_replace_output_none_keeps_the_output_and_a_tuple_keeps_its_tail() -> None:
    model = nn.Sequential()
    model.add_module("pair", _Pair())
    x = torch.randn(2, 3)
    with nethook.edit_output(model, "pair", lambda inp, out: None):
        hidden, tail = model(x)
    assert torch.equal(hidden, x * 2) and torch.equal(tail, torch.ones(1))
    with nethook.edit_output(model, "pair", lambda inp, out: out - inp):
        hidden, tail = model(x)
    assert torch.equal(hidden, x) and torch.equal(tail, torch.ones(1))


def test_edit_output_is_removed_on_error_and_passes_gradients() -> None:
    model = _model()
    x = torch.randn(3, 4)
    plain = model(x).detach()
    delta = torch.zeros(4, requires_grad=True)
    with nethook.edit_output(model, "0", lambda inp, out: out + delta):
        model(x).sum().backward()
    # The replacement is part of the graph: delta, added to each of the 3 rows, gets their summed gradient.
    assert torch.allclose(delta.grad, 3 * model[1].weight.sum(0).detach())
    with pytest.raises(RuntimeError, match="boom"):
        with nethook.edit_output(model, "0", lambda inp, out: out * 0):
            raise RuntimeError("boom")
    assert torch.equal(model(x).detach(), plain)
