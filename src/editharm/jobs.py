"""One function per workflow rule: explicit paths in, artifacts out.

workflow_scripts/*.py only translate Snakemake's objects into these calls, so every step
can also run (and be tested) without Snakemake.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import torch

from editharm.io import provenance, read_json, read_jsonl, write_json, write_jsonl


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


# ------------------------------------------------------------------ data

def download_dataset(name: str, spec: dict, mirror_dir: str | None, out_manifest: str) -> None:
    from editharm.sources import acquire_dataset

    t0 = time.time()
    manifest = acquire_dataset(name, spec, mirror_dir, Path(out_manifest).parent)
    write_json(out_manifest, provenance(dataset=name, files=manifest, seconds=time.time() - t0))


def prepare_dataset(spec: dict, raw_manifest: str, out_path: str) -> None:
    from editharm.datasets import prepare

    prepare(Path(raw_manifest).parent, spec, out_path)


def sample_edits(prepared: str, n: int, seed: int, out_path: str) -> None:
    from editharm.editsets import sample_edit_set

    rows = sample_edit_set(read_jsonl(prepared), n, seed)
    write_jsonl(out_path, rows)
    write_json(out_path + ".meta.json", provenance(source=prepared, n=n, seed=seed))


# ------------------------------------------------------------------ models

def fetch_model(source: dict, out_manifest: str, config: dict | None = None, model: str | None = None) -> None:
    from editharm.models import fetch_model as fetch

    t0 = time.time()
    info = fetch(source, Path(out_manifest).parent)
    if config is not None and model is not None:
        # A hub model's depth is known only now: a layer it lacks fails here, naming the file, not in layer_stats.
        from editharm.config import ConfigError, model_layer_problems

        problems = model_layer_problems(config, model, str(Path(out_manifest).parent))
        if problems:
            raise ConfigError("\n".join(problems))
    write_json(out_manifest, provenance(source=source, fetched=info, seconds=time.time() - t0))


def layer_stats(model_dir: str, corpus: str, layer: int, tokens: int, seq_len: int, out_path: str, threads: int | None = None) -> None:
    from editharm.corpus import iter_texts
    from editharm.methods.covariance import collect_second_moments, save_second_moment
    from editharm.models import layout_for, load_model

    _threads(threads)
    model, tokenizer = load_model(model_dir)
    t0 = time.time()
    moments = collect_second_moments(model, tokenizer, layout_for(model), [layer], iter_texts(corpus), n_tokens=tokens, seq_len=seq_len)
    save_second_moment(out_path, moments[layer], provenance(layer=layer, tokens=tokens, corpus=str(corpus), seconds=time.time() - t0))


# ------------------------------------------------------------------ editing

def _method_and_hparams(method_name: str, module: str | None, hparams_path: str):
    from editharm.methods import load_hparams, load_method

    method = load_method(method_name, module)
    return method, load_hparams(hparams_path, method.Hparams)


def train_method(model_dir: str, method_name: str, module: str | None, hparams_path: str, train_data: str,
                 seed: int, out_summary: str, threads: int | None = None) -> None:
    from editharm.editsets import load_requests
    from editharm.models import load_model

    _threads(threads)
    torch.manual_seed(seed)
    method, hparams = _method_and_hparams(method_name, module, hparams_path)
    model, tokenizer = load_model(model_dir)
    t0 = time.time()
    summary = method.train(model, tokenizer, load_requests(train_data), hparams, Path(out_summary).parent, seed)
    write_json(out_summary, provenance(method=method_name, hparams=dataclasses.asdict(hparams), seed=seed,
                                       seconds=time.time() - t0, summary=summary))


def edit_segment(*, model_dir: str, editset: str, n_prev: int, n: int, method_name: str, module: str | None,
                 hparams_path: str, regulariser: str, seed: int, batch_size: int, stats_paths: dict[int, str],
                 prev_tensors: str | None, prev_meta: str | None, trained_dir: str | None,
                 out_tensors: str, out_meta: str, out_log: str, threads: int | None = None) -> None:
    from editharm.checkpoint import load_checkpoint, write_tensors
    from editharm.editsets import load_requests
    from editharm.evaluate.editing import immediate_success
    from editharm.io import sha256_file
    from editharm.methods.base import EditContext
    from editharm.methods.covariance import covariance_loader
    from editharm.models import layout_for, load_model
    from editharm.sequential import SegmentSpec, resume_inputs, run_segment

    _threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    method, hparams = _method_and_hparams(method_name, module, hparams_path)
    model, tokenizer = load_model(model_dir)
    layout = layout_for(model)
    requests = load_requests(editset)
    if len(requests) < n:
        raise ValueError(f"{editset} holds {len(requests)} requests but checkpoint n{n} needs {n}")
    touched: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {}
    if prev_tensors:
        touched, state, _ = load_checkpoint(prev_tensors, prev_meta)
        write_tensors(model, touched)
    context = EditContext(layout=layout, covariance=covariance_loader(stats_paths), state=state, seed=seed,
                          artifacts={"trained_dir": trained_dir} if trained_dir else {})
    attach = getattr(method, "attach", None)

    def success(model_, tokenizer_, batch):
        scored = attach(model_, tokenizer_, context.state, hparams, context) if attach else model_
        return immediate_success(scored, tokenizer_, batch)

    spec = SegmentSpec(
        requests=requests[n_prev:n], first_index=n_prev, regulariser=regulariser, seed=seed, batch_size=batch_size,
        fingerprint_parts={"hparams_sha256": sha256_file(hparams_path), "prev": prev_meta and sha256_file(prev_meta),
                           "model_dir": model_dir, "editset": editset,
                           **resume_inputs(method, stats_paths, model_dir)},
    )
    run_segment(model, tokenizer, method, hparams, context, spec, touched, Path(out_tensors), Path(out_meta), Path(out_log),
                immediate_success=success)


# ------------------------------------------------------------------ measuring

def locality_reference(model_dir: str, editset: str, n: int, out_path: str, threads: int | None = None) -> None:
    from editharm.editsets import load_requests
    from editharm.evaluate.editing import locality_reference as reference
    from editharm.models import load_model

    _threads(threads)
    model, tokenizer = load_model(model_dir)
    t0 = time.time()
    ref = reference(model, tokenizer, load_requests(editset)[:n])
    write_json(out_path, {"reference": ref, "provenance": provenance(seconds=time.time() - t0)})


def edit_metrics(*, model_dir: str, editset: str, n: int, tensors: str, meta: str, reference: str, method_module: str | None,
                 trained_dir: str | None, batch_size: int, out_path: str, threads: int | None = None) -> None:
    from editharm.checkpoint import load_edited_model
    from editharm.editsets import load_requests
    from editharm.evaluate.editing import edit_metrics as metrics

    _threads(threads)
    model, tokenizer = load_edited_model(model_dir, tensors, meta, method_module, trained_dir)
    requests = load_requests(editset)[:n]
    t0 = time.time()
    rows, summary = metrics(model, tokenizer, requests, reference=read_json(reference)["reference"], batch_size=batch_size)
    write_json(out_path, {"summary": summary, "per_request": rows, "n": n,
                          "provenance": provenance(seconds=time.time() - t0, checkpoint=tensors)})


def weight_stats(*, model_dir: str, tensors: str, thresholds: list[float], quantiles: list[float], heatmap_size: list[int],
                 out_json: str, out_heatmaps: str) -> None:
    from safetensors.torch import save_file

    from editharm.checkpoint import base_tensors, load_checkpoint
    from editharm.io import atomic_path
    from editharm.weightstats import tensor_stats

    values, _, _ = load_checkpoint(tensors, str(Path(tensors).with_suffix(".json")))
    base = base_tensors(model_dir, list(values))
    t0 = time.time()
    stats, maps = {}, {}
    for name in sorted(values):
        stats[name], maps[name] = tensor_stats(base[name], values[name], thresholds, quantiles, tuple(heatmap_size))
    with atomic_path(out_heatmaps) as tmp:
        save_file({k: v.contiguous() for k, v in maps.items()}, str(tmp))
    write_json(out_json, {"tensors": stats, "provenance": provenance(seconds=time.time() - t0, checkpoint=tensors)})


def score_task(*, model_dir: str, task_name: str, data: str, shots: str | None, n: int | None, task_seed: int,
               tensors: str | None, meta: str | None, method_module: str | None, trained_dir: str | None,
               batch_size: int, out_path: str, threads: int | None = None) -> None:
    from editharm.checkpoint import load_edited_model
    from editharm.evaluate.engine import run_task
    from editharm.evaluate.tasks import get_task

    _threads(threads)
    task = get_task(task_name)
    rows = read_jsonl(data)
    if n is not None and n < len(rows):
        rows = random.Random(task_seed).sample(rows, n)
    shot_rows = read_jsonl(shots) if shots else None
    model, tokenizer = load_edited_model(model_dir, tensors, meta, method_module, trained_dir)
    result = run_task(model, tokenizer, task, rows, shots=shot_rows, batch_size=batch_size)
    write_json(out_path, {**result, "task": task_name, "n_requested": n, "task_seed": task_seed,
                          "provenance": provenance(checkpoint=tensors)})


# ------------------------------------------------------------------ tables and figures

def aggregate(dirs: dict, inputs: dict[str, list[str]], outputs: dict[str, str]) -> None:
    """The tables from exactly the rule's named input lists; `dirs`: results_dir and cache_dir."""
    from editharm import tables
    from editharm.io import atomic_path
    from editharm.plan import Paths

    frames = tables.all_tables(inputs, Paths(dirs), Path(dirs["results_dir"]) / "benchmarks")
    for name, frame in frames.items():
        with atomic_path(outputs[name]) as tmp:
            frame.to_csv(tmp, index=False)


def render_notebook(template: str, out_notebook: str, out_html: str, parameters: dict) -> None:
    """Execute a figure notebook with papermill and export it to HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from editharm.io import atomic_path, write_text

    Path(parameters["out_dir"]).mkdir(parents=True, exist_ok=True)
    with atomic_path(out_notebook) as tmp:
        papermill.execute_notebook(template, str(tmp), parameters=parameters, kernel_name="python3",
                                   progress_bar=False)
        html, _ = HTMLExporter().from_notebook_node(nbformat.read(str(tmp), as_version=4))
    write_text(out_html, html)
