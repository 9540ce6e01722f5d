"""One segment of sequential editing: from checkpoint n_prev to checkpoint n.

Each edit operation (one request, or a batch for batch editing) asks the method for an
update; weight updates are regularised per tensor, checked for NaN/Inf and added to the
model. Progress is saved every `resume_every` operations to a `.partial` folder next
to the output, so an interrupted segment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from editharm.checkpoint import load_checkpoint, save_checkpoint, write_tensors
from editharm.io import provenance, read_json, write_json, write_jsonl, read_jsonl
from editharm.methods.base import EditContext, StateUpdate, WeightUpdate
from editharm.regularize import parse_regulariser
from editharm.requests import EditRequest
from editharm.updates import apply_weight_update


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


def _operations(requests: list[EditRequest], batch_size: int) -> list[list[EditRequest]]:
    return [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]


def run_segment(model, tokenizer, method, hparams, context: EditContext, spec: SegmentSpec,
                touched: dict[str, torch.Tensor], out_tensors: Path, out_meta: Path, out_log: Path,
                immediate_success: Callable[[Any, Any, list[EditRequest]], list[float]] | None = None) -> dict:
    """Apply the segment's edits to `model` in place and write checkpoint n.

    `touched` holds the tensors changed by earlier segments (already written into the
    model); the checkpoint stores their current values plus those this segment changes.
    """
    regulariser = parse_regulariser(spec.regulariser)
    partial_dir = Path(out_tensors).parent.with_name(Path(out_tensors).parent.name + ".partial")
    fingerprint = _fingerprint(spec)
    ops = _operations(spec.requests, spec.batch_size)
    log: list[dict] = []
    start_op = 0
    names = set(touched)
    progress_file = partial_dir / "progress.json"
    if progress_file.exists() and read_json(progress_file).get("fingerprint") == fingerprint:
        tensors, state, _ = load_checkpoint(partial_dir / "checkpoint.safetensors", partial_dir / "checkpoint.json")
        write_tensors(model, tensors)
        names |= set(tensors)
        context.state = state
        log = read_jsonl(partial_dir / "edit_log.jsonl")
        start_op = read_json(progress_file)["operations_done"]
    elif partial_dir.exists():
        shutil.rmtree(partial_dir)

    seg_start = time.time()
    bar = tqdm(total=len(ops), initial=start_op, desc=f"editing {spec.first_index}->{spec.first_index + len(spec.requests)}",
               unit="op", mininterval=5.0)
    for op_index in range(start_op, len(ops)):
        batch = ops[op_index]
        edit_index = spec.first_index + op_index * spec.batch_size
        t0 = time.perf_counter()
        update = method.apply(model, tokenizer, batch, hparams, context)
        reg_info: dict[str, Any] = {}
        if isinstance(update, WeightUpdate):
            reg_info = apply_weight_update(model, update, regulariser, spec.seed, edit_index,
                                           where=f"edit {edit_index} (request {batch[0].case_id})")
            names |= set(reg_info)
        elif isinstance(update, StateUpdate):
            context.state = update.state
        else:
            raise TypeError(f"method {method.NAME} returned {type(update).__name__}; expected WeightUpdate or StateUpdate")
        seconds = time.perf_counter() - t0
        success = immediate_success(model, tokenizer, batch) if immediate_success else [None] * len(batch)
        for j, request in enumerate(batch):
            log.append({"edit_index": edit_index + j, "case_id": request.case_id, "operation": op_index,
                        "seconds": seconds / len(batch), "operation_seconds": seconds,
                        "immediate_success": success[j], **_jsonable(update.info), "regulariser": reg_info})
        bar.update(1)
        done = op_index + 1
        if done % spec.resume_every == 0 and done < len(ops):
            _save(model, names, context.state, partial_dir / "checkpoint.safetensors", partial_dir / "checkpoint.json",
                  {"partial": True}, partial_dir / "edit_log.jsonl", log)
            write_json(progress_file, {"fingerprint": fingerprint, "operations_done": done})
    bar.close()
    meta = provenance(
        edits_total=spec.first_index + len(spec.requests), edits_in_segment=len(spec.requests),
        regulariser=spec.regulariser, seed=spec.seed, batch_size=spec.batch_size, method=method.NAME,
        hparams=asdict(hparams), segment_seconds=time.time() - seg_start, fingerprint=fingerprint,
        **{k: v for k, v in spec.fingerprint_parts.items() if k != "hparams"},
    )
    _save(model, names, context.state, out_tensors, out_meta, meta, out_log, log)
    if partial_dir.exists():
        shutil.rmtree(partial_dir)
    return meta


def _save(model, names, state, tensors_path, meta_path, meta, log_path, log) -> None:
    tensors = {name: model.get_parameter(name).detach() for name in sorted(names)}
    write_jsonl(log_path, log)
    save_checkpoint(tensors_path, meta_path, tensors, state, meta)


def _jsonable(info: dict) -> dict:
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
