"""Benchmark ROME on a real model: seconds per edit, optimisation steps, efficacy.

Each CounterFact request is edited on its own: the update is added, the edit prompt
(and its paraphrases and neighbourhood prompts) is scored, and the original weight is
put back, so every edit starts from the unedited model. With --sequential the edits
accumulate instead (as the pipeline applies them, updates.write_update): each edit's
efficacy is scored right after it, and after the last edit every edit so far is
scored again (retention).

    .venv/bin/python benchmarks/bench_rome.py [--model cache/models/smollm2-135m] [--n 20] [--threads 1] [--sequential]

Efficacy, paraphrase and neighbourhood scores follow ROME's CounterFact comparison:
an edit succeeds when the mean per-token NLL of target_new is below target_true's
(the reverse for neighbourhood prompts). The machine is shared; the load average is
printed with the timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from editharm.methods import load_hparams
from editharm.methods import rome
from editharm.methods.base import EditContext
from editharm.methods.covariance import collect_second_moments, load_second_moment
from editharm.methods.prompts import target_ids
from editharm.editsets import convert_file
from editharm.models import layout_for, load_model
from editharm.regularize import parse_regulariser
from editharm.updates import write_update
from editharm.requests import EditRequest
from editharm.api import mirror_file

ROOT = Path(__file__).resolve().parents[1]


def counterfact_requests(path: str | Path, n: int) -> list[EditRequest]:
    """The first n usable records of a ROME-format CounterFact file, read by the pipeline's own converter."""
    return [EditRequest.from_json(row) for row in convert_file("counterfact_rome", path).rows[:n]]


@torch.no_grad()
def mean_nll(model, tokenizer, prompts: list[str], target: str) -> list[float]:
    """Mean per-token NLL of `target` after each prompt."""
    out = []
    for prompt in prompts:
        ans = target_ids(tokenizer, prompt, target)
        ids = list(tokenizer(prompt)["input_ids"])
        x = torch.tensor([ids + ans[:-1]])
        logp = torch.log_softmax(model(input_ids=x).logits[0].float(), dim=-1)
        pos = torch.arange(len(ids) - 1, len(ids) - 1 + len(ans))
        out.append(float(-logp[pos, torch.tensor(ans)].mean()))
    return out


def success(model, tokenizer, prompts: list[str], new: str, true: str) -> list[bool]:
    a, b = mean_nll(model, tokenizer, prompts, new), mean_nll(model, tokenizer, prompts, true)
    return [x < y for x, y in zip(a, b)]


def rome_setup(hparams_path, layer: int | None, model_path):
    """ROME's hyperparameters (layer overridden when given) and the model on the CPU: (hp, model, tokenizer, layout)."""
    hp = load_hparams(hparams_path, rome.Hparams)
    if layer is not None:
        hp = dataclasses.replace(hp, layer=layer)
    model, tokenizer = load_model(model_path, device="cpu")
    return hp, model, tokenizer, layout_for(model)


def corpus_texts(path: str | Path) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if len(line.split()) > 3]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "cache" / "models" / "smollm2-135m"))
    ap.add_argument("--hparams", default=str(ROOT / "configs/methods/rome/llama.yaml"))
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir, as the pipeline reads it)")
    ap.add_argument("--counterfact", help="ROME's CounterFact JSON (default: counterfact/counterfact_filtered.json in the mirror)")
    ap.add_argument("--corpus", help="tokenised WikiText file (default: wikitext2_tokenized/valid.txt in the mirror)")
    ap.add_argument("--cov", help="second-moment file (save_second_moment); computed from --corpus when absent")
    ap.add_argument("--cov-tokens", type=int, default=20000)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--layer", type=int, help="override the hparams layer")
    ap.add_argument("--threads", type=int, help="torch threads (1 is faster than 2 on a loaded shared machine)")
    ap.add_argument("--no-generalization", action="store_true", help="score only the edit prompt")
    ap.add_argument("--sequential", action="store_true",
                    help="keep every edit (no restore); report retention of all edits after the last one")
    ap.add_argument("--json", help="write the per-edit rows and the summary to this file")
    args = ap.parse_args(argv)
    args.counterfact = args.counterfact or str(mirror_file("counterfact/counterfact_filtered.json", args.mirror))
    args.corpus = args.corpus or str(mirror_file("wikitext2_tokenized/valid.txt", args.mirror))

    if args.threads:
        torch.set_num_threads(args.threads)
    hp, model, tokenizer, layout = rome_setup(args.hparams, args.layer, args.model)
    print(f"model {args.model}  layer {hp.layer}  threads {torch.get_num_threads()}  load {os.getloadavg()}", flush=True)

    cov = None
    if hp.mom2_adjustment:
        if args.cov:
            cov, meta = load_second_moment(args.cov)
            print(f"second moment from {args.cov}: {meta}")
        else:
            t = time.perf_counter()
            cov = collect_second_moments(model, tokenizer, layout, [hp.layer], corpus_texts(args.corpus), args.cov_tokens)[hp.layer]
            print(f"second moment of layer {hp.layer} over {args.cov_tokens} tokens: {time.perf_counter() - t:.1f} s", flush=True)
    context = EditContext(layout=layout, covariance=lambda layer: cov, seed=0)

    t = time.perf_counter()
    rome.context_templates(model, tokenizer, context, hp.context_template_length_params)
    print(f"context templates: {time.perf_counter() - t:.1f} s", flush=True)

    requests = counterfact_requests(args.counterfact, args.n)
    param = model.get_parameter(layout.down_weight_name(hp.layer))
    original = param.detach().clone()
    rows = []
    for i, req in enumerate(requests):
        t, c = time.perf_counter(), time.process_time()
        update = rome.apply(model, tokenizer, [req], hp, context)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        write_update(rome, model, tokenizer, [req], hp, context, update, parse_regulariser("none"), 0, i)
        row = {"case": req.case_id, "seconds": seconds, "cpu_seconds": cpu, "steps": update.info["steps"],
               "loss": update.info["loss"]} | scores(model, tokenizer, req, not args.no_generalization)
        if not args.sequential:
            with torch.no_grad():
                param.copy_(original)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    retained = [scores(model, tokenizer, req, not args.no_generalization) for req in requests] if args.sequential else None

    summary = {
        "model": args.model, "layer": hp.layer, "edits": len(rows), "mode": "sequential" if args.sequential else "single",
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in rows),
        "mean_cpu_seconds": statistics.mean(r["cpu_seconds"] for r in rows),
        "median_steps": statistics.median(r["steps"] for r in rows),
        "mean_steps": statistics.mean(r["steps"] for r in rows),
        # Right after each edit (with --sequential, on the model holding all edits up to it).
        "immediate": _means(rows),
    }
    if retained is not None:
        summary["retained_after_last_edit"] = _means(retained)
    print(f"\nROME on {args.model}, layer {hp.layer}, {len(rows)} CounterFact edits ({summary['mode']}), "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()}")
    print(f"median seconds per edit: {summary['median_seconds']:.2f}")
    # CPU time of this process: what the edit costs without other jobs competing for the cores.
    print(f"median CPU seconds per edit: {summary['median_cpu_seconds']:.2f} (mean {summary['mean_cpu_seconds']:.2f})")
    print(f"optimisation steps: median {summary['median_steps']}, mean {summary['mean_steps']:.1f}")
    print("right after each edit: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["immediate"].items()))
    if retained is not None:
        print("all edits after the last: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["retained_after_last_edit"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows, "retained": retained}, indent=1))
    sys.stdout.flush()


def scores(model, tokenizer, req: EditRequest, generalization: bool) -> dict:
    row = {"efficacy": float(success(model, tokenizer, [req.filled_prompt], req.target_new, req.target_true)[0])}
    if generalization:
        para = success(model, tokenizer, list(req.paraphrases), req.target_new, req.target_true)
        neigh = success(model, tokenizer, [p.prompt for p in req.locality], req.target_new, req.target_true)
        row["paraphrase"] = sum(para) / max(1, len(para))
        row["neighbourhood"] = sum(not x for x in neigh) / max(1, len(neigh))
    return row


def _means(rows: list[dict]) -> dict:
    keys = [k for k in ("efficacy", "paraphrase", "neighbourhood") if k in rows[0]]
    return {k: statistics.mean(r[k] for r in rows) for k in keys}


if __name__ == "__main__":
    main()
