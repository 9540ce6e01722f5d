"""A segment killed at any write resumes to exactly the result of an uninterrupted run.

Every file the segment writes goes through os.replace (atomic_path), and the partial save
is removed with os.unlink; those are the moments at which what is on disk changes. The
test kills the run (a BaseException, as KeyboardInterrupt or SIGTERM would) just before the
k-th of them, for every k, reruns, and compares tensors, method state and edit log with a
run that was never interrupted.
"""

import os
import types
from dataclasses import dataclass

import pytest
import torch

from editharm.checkpoint import load_checkpoint
from editharm.io import read_jsonl
from editharm.methods.base import EditContext, StateUpdate, WeightUpdate
from editharm.models import layout_for, random_model
from editharm.sequential import SegmentSpec, partial_path, run_segment
from test_sequential import _requests

N_REQUESTS = 5
TIMING_KEYS = {"seconds", "operation_seconds"}


@dataclass
class _Hparams:
    scale: float = 0.01


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so no `except Exception` in the code under test catches it."""


def _weight_method():
    # The delta depends on the current weights (applying an edit twice gives other tensors)
    # and on the global torch RNG (a resumed run must draw the same numbers).
    def apply(model, tokenizer, requests, hparams, context):
        name = context.layout.down_weight_name(1)
        weight = model.get_parameter(name)
        noise = torch.randn(weight.shape) * hparams.scale
        return WeightUpdate({name: noise - 0.1 * weight}, info={"steps": 1, "loss": float(noise.abs().sum())})

    return types.SimpleNamespace(NAME="fake_weights", Hparams=_Hparams, SUPPORTS_BATCH=False, EDITS_WEIGHTS=True,
                                 apply=apply)


def _state_method():
    # A memory that grows per edit (tensor part) and counts edits (JSON part), like GRACE/SERAC.
    def apply(model, tokenizer, requests, hparams, context):
        keys = context.state.get("keys", torch.zeros(0, 3))
        new = torch.randn(1, 3) + float(requests[0].case_id)
        state = {"keys": torch.cat([keys, new]), "count": context.state.get("count", 0) + 1,
                 "ids": context.state.get("ids", []) + [requests[0].case_id]}
        return StateUpdate(state=state, info={"memory_size": state["count"]})

    return types.SimpleNamespace(NAME="fake_state", Hparams=_Hparams, SUPPORTS_BATCH=False, EDITS_WEIGHTS=False,
                                 apply=apply)


def _segment(root, method, resume_every=1):
    torch.manual_seed(0)  # as edit_segment seeds each job
    model, tok = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    ctx = EditContext(layout=layout_for(model), covariance=lambda layer: None)
    spec = SegmentSpec(requests=_requests(N_REQUESTS), first_index=0, regulariser="none", seed=0,
                       resume_every=resume_every)
    out = root / "n5"
    run_segment(model, tok, method, _Hparams(), ctx, spec, {}, out / "checkpoint.safetensors", out / "checkpoint.json",
                out / "edit_log.jsonl")
    return out


def _result(out):
    tensors, state, _ = load_checkpoint(out / "checkpoint.safetensors", out / "checkpoint.json")
    log = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_jsonl(out / "edit_log.jsonl")]
    return tensors, state, log


def _assert_same(a, b):
    (ta, sa, la), (tb, sb, lb) = a, b
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]) if isinstance(sa[key], torch.Tensor) else sa[key] == sb[key], key
    assert la == lb


def _kill_at(monkeypatch, k):
    """Make the k-th change on disk (1-based) raise _Killed instead of happening."""
    count = {"n": 0}
    real_replace, real_unlink = os.replace, os.unlink

    def boundary():
        count["n"] += 1
        if count["n"] == k:
            raise _Killed(f"killed before disk change {k}")

    def replace(src, dst, *args, **kwargs):
        boundary()
        return real_replace(src, dst, *args, **kwargs)

    def unlink(path, *args, **kwargs):
        if not os.path.basename(os.fspath(path)).startswith("."):  # temp files are not commits
            boundary()
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    return count


@pytest.mark.parametrize("make_method", [_weight_method, _state_method], ids=["weights", "state"])
def test_kill_at_every_write_resumes_bit_identical(tmp_path, monkeypatch, make_method, one_torch_thread):
    reference = _result(_segment(tmp_path / "straight", make_method()))
    assert [row["edit_index"] for row in reference[2]] == list(range(N_REQUESTS))

    k, killed_somewhere = 0, 0
    while True:
        k += 1
        root = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            count = _kill_at(m, k)
            try:
                _segment(root, make_method())
                finished = True
            except _Killed:
                finished = False
        if finished:
            assert count["n"] == k - 1, "every boundary before this k was hit once"
            break
        killed_somewhere += 1
        resumed = _result(_segment(root, make_method()))
        _assert_same(resumed, reference)
        assert not partial_path(root / "n5" / "checkpoint.safetensors").exists()
    # 4 partial saves (after operations 1-4 of 5), 3 outputs, removing the partial save.
    assert killed_somewhere == 8


def test_resume_continues_after_the_saved_operation(tmp_path, monkeypatch, one_torch_thread):
    """Killed just before the 3rd partial save: two operations are kept, the next run applies only the rest."""
    with monkeypatch.context() as m:
        _kill_at(m, 3)
        with pytest.raises(_Killed):
            _segment(tmp_path, _weight_method())
    calls = []
    method = _weight_method()
    inner = method.apply
    method.apply = lambda model, tok, requests, hp, ctx: calls.append(requests[0].case_id) or inner(model, tok, requests, hp, ctx)
    _segment(tmp_path, method)
    assert calls == ["2", "3", "4"]


def test_partial_from_other_inputs_is_discarded(tmp_path, monkeypatch, one_torch_thread):
    with monkeypatch.context() as m:
        _kill_at(m, 3)
        with pytest.raises(_Killed):
            _segment(tmp_path, _weight_method())
    assert partial_path(tmp_path / "n5" / "x").exists()
    calls = []
    method = _weight_method()
    inner = method.apply
    method.apply = lambda model, tok, requests, hp, ctx: calls.append(requests[0].case_id) or inner(model, tok, requests, hp, ctx)
    torch.manual_seed(0)
    model, tok = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    spec = SegmentSpec(requests=_requests(N_REQUESTS), first_index=0, regulariser="none", seed=0, resume_every=1,
                       fingerprint_parts={"method_code": "changed"})
    out = tmp_path / "n5"
    run_segment(model, tok, method, _Hparams(), EditContext(layout=layout_for(model), covariance=lambda layer: None), spec,
                {}, out / "checkpoint.safetensors", out / "checkpoint.json", out / "edit_log.jsonl")
    assert calls == [str(i) for i in range(N_REQUESTS)], "a stale partial save must not be resumed"


# ---------------------------------------------------------------- what a partial save depends on

METHOD_SOURCE = '''
NAME = "mine"
Hparams = dict
SUPPORTS_BATCH = False
EDITS_WEIGHTS = True
from editharm.methods.base import WeightUpdate


def apply(model, tokenizer, requests, hparams, context):
    return WeightUpdate({}, info={"scale": SCALE})
'''


def test_resume_inputs_change_with_method_code_statistics_and_weights(tmp_path, monkeypatch):
    import importlib

    from safetensors.torch import load_file, save_file

    from editharm.jobs import fetch_model
    from editharm.sequential import resume_inputs

    model_dir = tmp_path / "model"
    fetch_model({"kind": "random", "family": "llama", "dims": {"hidden": 16, "layers": 2, "heads": 2}},
                str(model_dir / "editharm_model.json"))
    stats = tmp_path / "layer1.safetensors"
    save_file({"m": torch.eye(4)}, str(stats))
    (tmp_path / "mine_method.py").write_text(METHOD_SOURCE + "SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    method = importlib.import_module("mine_method")

    base = resume_inputs(method, {1: str(stats)}, model_dir)
    assert resume_inputs(method, {1: str(stats)}, model_dir) == base, "deterministic"

    (tmp_path / "mine_method.py").write_text(METHOD_SOURCE + "SCALE = 2\n")
    changed = resume_inputs(method, {1: str(stats)}, model_dir)
    assert changed["method_code"] != base["method_code"] and changed["model_weights"] == base["model_weights"]
    (tmp_path / "mine_method.py").write_text(METHOD_SOURCE + "SCALE = 1\n")

    save_file({"m": 2 * torch.eye(4)}, str(stats))
    assert resume_inputs(method, {1: str(stats)}, model_dir)["covariance_sha256"] != base["covariance_sha256"]
    save_file({"m": torch.eye(4)}, str(stats))

    weights = load_file(str(model_dir / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3  # same size, same header: only the values differ
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert resume_inputs(method, {1: str(stats)}, model_dir)["model_weights"] != base["model_weights"]


def test_weights_identity_reuses_fetch_time_hashes_only_for_unchanged_files(tmp_path):
    import json

    from editharm.jobs import fetch_model
    from editharm.models import weights_identity

    model_dir = tmp_path / "model"
    fetch_model({"kind": "random", "family": "gpt2", "dims": {"hidden": 16, "layers": 2, "heads": 2}},
                str(model_dir / "editharm_model.json"))
    recorded = weights_identity(model_dir)
    manifest = model_dir / "editharm_model.json"
    data = json.loads(manifest.read_text())
    manifest.unlink()
    assert weights_identity(model_dir) == recorded, "the recorded hashes are the files' true hashes"
    # A record is trusted only while size and mtime match: a forged record for an unchanged file
    # is used (no re-hash), one whose mtime no longer matches is not.
    data["fetched"]["files"]["model.safetensors"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    assert weights_identity(model_dir) != recorded
    data["fetched"]["files"]["model.safetensors"]["mtime_ns"] -= 1
    manifest.write_text(json.dumps(data))
    assert weights_identity(model_dir) == recorded
