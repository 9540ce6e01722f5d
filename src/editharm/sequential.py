"""One segment of sequential editing: from checkpoint n_prev to checkpoint n.

Each edit operation (one request, or a batch for batch editing) asks the method for an
update; weight updates are regularised per tensor, checked for NaN/Inf and added to the
model. Progress is saved every `resume_every` operations to ONE file next to the output
folder (`<out>.partial.safetensors`: tensors, method state, edit log, operation count and
RNG state, replaced atomically), so an interrupted segment resumes where it stopped and
ends bit-identical to an uninterrupted run, wherever the interruption fell.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from editharm.checkpoint import load_bundle, save_bundle, save_checkpoint, write_tensors
from editharm.io import nonfinite_key, provenance, write_jsonl
from editharm.methods.base import EditContext
from editharm.regularize import parse_regulariser
from editharm.requests import EditRequest
from editharm.updates import write_update


@dataclass
class SegmentSpec:
    requests: list[EditRequest]          # the requests of this segment only, in order
    first_index: int                     # index of the first request in the edit set (= n_prev)
    regulariser: str
    seed: int
    batch_size: int = 1
    resume_every: int = 25
    fingerprint_parts: dict[str, Any] = field(default_factory=dict)


def _fingerprint(spec: SegmentSpec) -> str:
    payload = {"ids": [r.case_id for r in spec.requests], "first": spec.first_index, "reg": spec.regulariser,
               "seed": spec.seed, "batch": spec.batch_size, **spec.fingerprint_parts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def operations(requests: list[EditRequest], batch_size: int) -> list[list[EditRequest]]:
    """The edit operations: consecutive batches of batch_size requests (the last may be shorter)."""
    return [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]


def run_segment(model, tokenizer, method, hparams, context: EditContext, spec: SegmentSpec,
                touched: dict[str, torch.Tensor], out_tensors: Path, out_meta: Path, out_log: Path,
                immediate_success: Callable[[Any, Any, list[EditRequest]], list[float]] | None = None) -> dict:
    """Apply the segment's edits to `model` in place and write checkpoint n.

    `touched` holds the tensors changed by earlier segments (already written into the
    model); the checkpoint stores their current values plus those this segment changes.
    """
    regulariser = parse_regulariser(spec.regulariser)
    partial = partial_path(out_tensors)
    legacy_partial = partial.with_name(Path(out_tensors).parent.name + ".partial")
    if legacy_partial.is_dir():  # the former three-file layout, whose files could disagree: never trusted
        shutil.rmtree(legacy_partial)
    fingerprint = _fingerprint(spec)
    ops = operations(spec.requests, spec.batch_size)
    log: list[dict] = []
    start_op = 0
    names = set(touched)
    if partial.exists():
        tensors, state, record, rng = load_bundle(partial)
        if record.get("fingerprint") == fingerprint:
            write_tensors(model, tensors)
            names |= set(tensors)
            context.state = state
            log = record["log"]
            start_op = record["operations_done"]
            _restore_rng(rng, record["python_rng"])
            print(f"resuming {partial} after {start_op} of {len(ops)} operations", file=sys.stderr)
        else:
            print(f"discarding {partial}: it was made from other inputs (hparams, code, model, statistics or "
                  "earlier checkpoint); the segment starts over", file=sys.stderr)
            partial.unlink()

    seg_start = time.time()
    bar = tqdm(total=len(ops), initial=start_op, desc=f"editing {spec.first_index}->{spec.first_index + len(spec.requests)}",
               unit="op", mininterval=5.0)
    for op_index in range(start_op, len(ops)):
        batch = ops[op_index]
        edit_index = spec.first_index + op_index * spec.batch_size
        t0 = time.perf_counter()
        update = method.apply(model, tokenizer, batch, hparams, context)
        check_finite_info(update.info, f"edit {edit_index} (request {batch[0].case_id}) by method {method.NAME}")
        reg_info = write_update(method, model, tokenizer, batch, hparams, context, update, regulariser, spec.seed,
                                edit_index)
        names |= set(reg_info)
        seconds = time.perf_counter() - t0
        success = immediate_success(model, tokenizer, batch) if immediate_success else [None] * len(batch)
        for j, request in enumerate(batch):
            log.append({"edit_index": edit_index + j, "case_id": request.case_id, "operation": op_index,
                        "seconds": seconds / len(batch), "operation_seconds": seconds,
                        "immediate_success": success[j], **jsonable(update.info), "regulariser": reg_info})
        bar.update(1)
        done = op_index + 1
        if done % spec.resume_every == 0 and done < len(ops):
            rng, python_rng = _rng_snapshot()
            save_bundle(partial, current_tensors(model, names), context.state,
                        {"fingerprint": fingerprint, "operations_done": done, "log": log, "python_rng": python_rng}, rng)
    bar.close()
    meta = provenance(
        edits_total=spec.first_index + len(spec.requests), edits_in_segment=len(spec.requests),
        regulariser=spec.regulariser, seed=spec.seed, batch_size=spec.batch_size, method=method.NAME,
        hparams=asdict(hparams), segment_seconds=time.time() - seg_start, fingerprint=fingerprint,
        **{k: v for k, v in spec.fingerprint_parts.items() if k != "hparams"},
    )
    # The three outputs are written one after another; the partial file goes only once all
    # exist, so a kill in between resumes from it (Snakemake reruns a job whose outputs are incomplete).
    write_jsonl(out_log, log)
    save_checkpoint(out_tensors, out_meta, current_tensors(model, names), context.state, meta)
    partial.unlink(missing_ok=True)
    return meta


def partial_path(out_tensors: str | Path) -> Path:
    """Where the segment writing `out_tensors` keeps its resumable progress (beside its output folder)."""
    out_dir = Path(out_tensors).parent
    return out_dir.with_name(out_dir.name + ".partial.safetensors")


class DivergedEditError(RuntimeError):
    """A method reported a non-finite number (loss, norm) for an edit: its optimisation diverged."""


def check_finite_info(info: dict, where: str) -> None:
    """Raise if any number in a method's info (nested lists/dicts, tensors) is NaN/Inf.

    A NaN loss means the value optimisation diverged or never ran (0 steps); the edit's
    weights are then meaningless even when they happen to be finite.
    """
    key = nonfinite_key(info)
    if key is not None:
        raise DivergedEditError(
            f"{where}: the method reports {key} as NaN or Inf, not a finite number: its optimisation diverged "
            "or ran no step; nothing was saved. Check the method's hyperparameter file (learning rate, number of steps)."
        )


def current_tensors(model, names) -> dict[str, torch.Tensor]:
    """The current values of the named parameters, by name in sorted order (what a checkpoint stores)."""
    return {name: model.get_parameter(name).detach() for name in sorted(names)}


def _rng_snapshot() -> tuple[dict[str, torch.Tensor], list]:
    """The random generators' states, saved with a partial so a resumed run draws the same numbers."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    return tensors, [version, list(internal), gauss]


def _restore_rng(tensors: dict[str, torch.Tensor], python_rng: list) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors) - 1) if f"cuda{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))


def jsonable(info: dict) -> dict:
    """A method's info dict for the edit log: tensors as numbers or lists, anything else JSON cannot hold as its repr."""
    out = {}
    for k, v in info.items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        try:
            json.dumps(v)
        except TypeError:
            v = repr(v)
        out[k] = v
    return out


def resume_inputs(method, stats_paths: dict[int, str], model_dir: str | Path) -> dict[str, Any]:
    """What a partial save depends on besides hparams, edit set and previous checkpoint: the code
    that computes an edit, the covariance statistics it reads, and the base model's weights.

    A partial save made with other code, statistics or weights holds edits that a fresh run
    would not make; its fingerprint must differ so that it is discarded, not resumed. The
    code is every editharm module the method and the job import (whole files: a change
    anywhere in them discards a partial, which costs redone edits, never a wrong result).
    Statistics files are hashed whole (they are small next to the model: hidden^2 floats
    per layer). The weights use the hashes recorded when the model was fetched, re-hashed
    only for files whose size or mtime changed since (models.weights_identity).
    """
    from editharm.codehash import code_fingerprint, file_entry, closure, module_closure
    from editharm.io import sha256_file
    from editharm.models import weights_identity

    modules = set(module_closure("editharm.jobs")) | set(module_closure("editharm.sequential"))
    if method.__name__.split(".")[0] == "editharm":
        modules |= set(module_closure(method.__name__))
        own = ""
    else:  # a method module of one's own: its file, plus the editharm modules it imports
        entry = file_entry(method.__file__)
        modules |= {label for label in closure([entry]) if label.split(".")[0] == "editharm"}
        own = sha256_file(method.__file__)
    return {
        "method_code": hashlib.sha256((code_fingerprint(modules) + own).encode()).hexdigest(),
        "covariance_sha256": {str(layer): sha256_file(path) for layer, path in sorted(stats_paths.items())},
        "model_weights": weights_identity(model_dir),
    }
