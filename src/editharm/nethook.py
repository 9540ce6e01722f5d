"""Forward hooks: read a module's input/output, add a vector to its output, or replace it.

Editors need two things from a running model: the activations at a module (the MLP
keys are the *input* of the down projection, the values its *output*) and the
ability to perturb or replace an output. Every hook here but `replace_output` is removed
when its `with` block ends, also on error, so a failed edit never leaves a model
that silently computes something else; `replace_output` is for edits meant to stay
installed, and returns the handle that removes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.hooks import RemovableHandle


def _first_tensor(value):
    """The main tensor of a module's input or output (HF modules often return tuples)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(value).__name__}")


def _replace_first(value, tensor: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return tensor
    return type(value)((tensor, *value[1:]))


@dataclass
class Capture:
    """What a `capture` block recorded for one module (None where not asked for)."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once everything needed is recorded."""


def _stop_hook(module, args, output):
    raise StopForward


@contextlib.contextmanager
def capture(model: torch.nn.Module, names: Sequence[str], inputs: bool = False, outputs: bool = True,
            detach: bool = True, stop_after: str | None = None) -> Iterator[dict[str, Capture]]:
    """Record the first positional input and/or the output of each named module.

    `stop_after` names a module after which the forward raises StopForward; callers
    wrap their forward in `run_until_stopped`. Only the last call of a module within
    the block is kept (one forward per block is the intended use).
    """
    records = {name: Capture() for name in names}
    handles = []

    def make_hook(name: str):
        def hook(module, args, output):
            rec = records[name]
            if inputs:
                x = _first_tensor(args)
                rec.input = x.detach() if detach else x
            if outputs:
                y = _first_tensor(output)
                rec.output = y.detach() if detach else y
            if name == stop_after:
                raise StopForward
        return hook

    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_hook(make_hook(name)))
        if stop_after is not None and stop_after not in records:
            handles.append(model.get_submodule(stop_after).register_forward_hook(_stop_hook))
        yield records
    finally:
        for h in handles:
            h.remove()


def run_until_stopped(fn: Callable[[], object]) -> object | None:
    """Call `fn`; a StopForward raised by a hook ends it quietly (returns None)."""
    try:
        return fn()
    except StopForward:
        return None


@contextlib.contextmanager
def add_to_output(model: torch.nn.Module, name: str, vectors: torch.Tensor,
                  rows: torch.Tensor | Sequence[int], positions: torch.Tensor | Sequence[int]) -> Iterator[None]:
    """Add vectors[i] to the output of module `name` at (rows[i], positions[i]).

    The addition is out of place, so autograd sees it and `vectors` may require grad.
    """
    module = model.get_submodule(name)
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    pos_t = torch.as_tensor(positions, dtype=torch.long)
    if vectors.dim() == 1:
        vectors = vectors.expand(len(rows_t), -1)

    def hook(mod, args, output):
        y = _first_tensor(output)
        index = (rows_t.to(y.device), pos_t.to(y.device))
        y = y.index_put(index, vectors.to(y.dtype), accumulate=True)
        return _replace_first(output, y)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def replace_output(model: torch.nn.Module, name: str,
                   fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]) -> RemovableHandle:
    """Until the returned handle's `remove()`, module `name`'s main output y becomes fn(x, y),
    x its first positional input; fn returning None leaves the output object untouched.

    Persistent on purpose: an edit that lives on the model between calls (GRACE's codebook,
    installed once and scored by any later forward) has no `with` block to end it. Its owner
    keeps the handle and removes it; code that changes outputs for one computation uses
    `edit_output`, which cannot be left installed by an error.
    """
    def hook(mod, args, output):
        y = fn(_first_tensor(args), _first_tensor(output))
        return None if y is None else _replace_first(output, y)

    return model.get_submodule(name).register_forward_hook(hook)


@contextlib.contextmanager
def edit_output(model: torch.nn.Module, name: str,
                fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Module `name`'s main output y becomes fn(x, y) (x its first input; None keeps y) for the block."""
    handle = replace_output(model, name, fn)
    try:
        yield
    finally:
        handle.remove()
