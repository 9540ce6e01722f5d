"""The `editharm` command: edit a model, export a checkpoint, score a model, outside the DAG.

    editharm edit   --model smollm2-135m --method rome --requests zsre --n 3 --out my_edit/
    editharm export --checkpoint my_edit/ --out my_edit_hf/
    editharm score  --model my_edit_hf/ --task sst2 --n 50

Arguments are checked by the parsers the config validation uses (regularisers,
methods, tasks, datasets), so a bad value gets the message a bad config gets.
Everything runs through editharm.api / editharm.export / editharm.jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _checked(check):
    """An argparse type from a config parser: its ValueError message becomes the argument's error."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError as e:  # UnknownMethodError and the task registry's errors are ValueErrors
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _regulariser_name(text: str) -> str:
    from editharm.regularize import parse_regulariser

    return parse_regulariser(text).name


def _method_name(text: str) -> str:
    from editharm.methods import load_method

    load_method(text)
    return text


def _task_name(text: str) -> str:
    from editharm.evaluate.tasks import get_task

    get_task(text)
    return text


_regulariser, _method, _task = _checked(_regulariser_name), _checked(_method_name), _checked(_task_name)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"value {text!r} should be of type integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"value {value} is invalid: {value} is less than the minimum of 1")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="workflow config naming models and datasets (default: the repository's config.yaml)")
    p.add_argument("--cache-dir", help="models, data and covariance statistics (default: $EDITHARM_CACHE_DIR or ~/.cache/editharm)")
    p.add_argument("--threads", type=_positive, help="torch threads")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="editharm", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    e = sub.add_parser("edit", help="edit a model with a method and a regulariser; write a checkpoint and its metrics")
    e.add_argument("--model", required=True, help="a configured model name, a model folder, or a hub id")
    e.add_argument("--method", required=True, type=_method)
    e.add_argument("--hparams", help="editharm or EasyEdit hyperparameter YAML (default: configs/methods/<method>/<family>.yaml)")
    e.add_argument("--requests", required=True, help="a configured dataset name, a prepared .jsonl, or a raw dataset file (with --format)")
    e.add_argument("--format", help="format of a raw dataset file: counterfact_rome, counterfact_easyedit, zsre_mend")
    e.add_argument("--n", type=_positive, help="edit the first N requests (of the seed's edit set for a configured dataset)")
    e.add_argument("--regulariser", type=_regulariser, default="none")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=_positive, default=1)
    e.add_argument("--trained-dir", help="MEND/SERAC: the folder of their trained parts")
    e.add_argument("--out", required=True, help="checkpoint folder to write (checkpoint.safetensors/.json, edit_log.jsonl, editing.json, weights.json)")
    e.add_argument("--export", help="also write the edited model as a Hugging Face folder here")
    e.add_argument("--no-metrics", action="store_true", help="skip the editing metrics")
    _common(e)

    x = sub.add_parser("export", help="an edited checkpoint -> a Hugging Face model folder")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint folder (results/edits/.../n<N>/ or `editharm edit --out`)")
    src.add_argument("--chain", nargs=6, metavar=("MODEL", "DATASET", "METHOD", "REGULARISER", "SEED", "N"),
                     help="a workflow chain's checkpoint under the config's results_dir")
    x.add_argument("--model-dir", help="the base model folder (default: the one the checkpoint records)")
    x.add_argument("--out", required=True)
    x.add_argument("--overwrite", action="store_true")
    x.add_argument("--config", help="workflow config for --chain (default: the repository's config.yaml)")

    s = sub.add_parser("score", help="score a model (or a checkpoint of it) on a downstream task")
    s.add_argument("--model", required=True, help="a configured model name, a model folder (an export too), or a hub id")
    s.add_argument("--checkpoint", help="an editharm checkpoint folder to apply to --model first")
    s.add_argument("--trained-dir", help="SERAC: the folder of its trained parts")
    s.add_argument("--task", required=True, type=_task)
    s.add_argument("--n", type=_positive, help="items sampled with --task-seed (default: the config's tasks.<task>.n, else all)")
    s.add_argument("--task-seed", type=int, default=None)
    s.add_argument("--batch-size", type=_positive, default=16)
    s.add_argument("--out", help="write the full result JSON here")
    _common(s)
    return top


def _edit(args) -> dict:
    from editharm import api

    model, tokenizer = api.load_model(args.model, config=args.config, cache_dir=args.cache_dir)
    requests = api.load_requests(args.requests, format=args.format, n=args.n, seed=args.seed,
                                 config=args.config, cache_dir=args.cache_dir)
    editor = api.Editor(model, tokenizer, args.method, args.hparams, regulariser=args.regulariser, seed=args.seed,
                        batch_size=args.batch_size, trained_dir=args.trained_dir, config=args.config,
                        cache_dir=args.cache_dir)
    prepared = editor.prepare()
    log = editor.edit(requests)
    out = editor.save(args.out)
    from editharm.io import write_json

    report = {"checkpoint": str(out), "edits": len(log), "prepare_seconds": prepared,
              "edit_seconds": [round(row["seconds"], 3) for row in log],
              "immediate_success": [row["immediate_success"] for row in log]}
    if not args.no_metrics:
        rows, summary = editor.evaluate()
        write_json(out / "editing.json", {"summary": summary, "per_request": rows, "n": len(rows)})
        report["editing"] = summary
    if editor.method.EDITS_WEIGHTS:
        stats = editor.weight_stats()
        write_json(out / "weights.json", {"tensors": stats})
        report["relative_frobenius"] = {name: s["relative_frobenius"] for name, s in stats.items()}
    if args.export:
        report["export"] = str(editor.export(args.export))
    return report


def _export(args) -> dict:
    from editharm import api
    from editharm.export import export_checkpoint, export_run

    if args.checkpoint:
        folder = export_checkpoint(args.checkpoint, args.out, model_dir=args.model_dir, overwrite=args.overwrite)
    else:
        model, dataset, method, reg, seed, n = args.chain
        ws = api.workspace(args.config)
        config = {**ws.config, "results_dir": str(ws.resolve(ws.config.get("results_dir", "results"))),
                  "cache_dir": str(ws.resolve(ws.config.get("cache_dir", "cache")))}
        try:
            seed_value, n_value = int(seed), _positive(n)
            method, reg = _method(method), _regulariser(reg)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise SystemExit(f"editharm export: error: argument --chain: {e}") from None
        folder = export_run(config, model, dataset, method, reg, seed_value, n_value, args.out, overwrite=args.overwrite)
    return {"export": str(folder)}


def _score(args) -> dict:
    from editharm import api
    from editharm.evaluate.tasks import get_task
    from editharm.export import checkpoint_files
    from editharm.io import read_json
    from editharm.jobs import score_task

    ws = api.workspace(args.config, args.cache_dir)
    task = get_task(args.task)
    folder = api.model_folder(args.model, config=ws)
    data = api.prepared_dataset(task.DATASET, config=ws)
    shots = api.prepared_dataset(task.SHOTS_DATASET, config=ws) if task.SHOTS_DATASET else None
    configured = (ws.config.get("tasks") or {}).get(args.task) or {}
    n = args.n if args.n is not None else configured.get("n")
    tensors = meta = None
    if args.checkpoint:
        tensors, meta = checkpoint_files(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or str(Path(tmp) / "score.json")
        score_task(model_dir=str(folder), task_name=args.task, data=str(data), shots=shots and str(shots), n=n,
                   task_seed=args.task_seed if args.task_seed is not None else ws.config.get("task_seed", 1234),
                   tensors=tensors and str(tensors), meta=meta and str(meta), method_module=None,
                   trained_dir=args.trained_dir, batch_size=args.batch_size, out_path=out, threads=args.threads)
        result = read_json(out)
    return {k: result.get(k) for k in ("task", "status", "metrics", "n", "seconds", "reason") if k in result}


def main(argv: list[str] | None = None) -> int:
    import logging

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    run = {"edit": _edit, "export": _export, "score": _score}[args.command]
    try:
        report = run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"editharm {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
