"""Sequential ROME on a real model: how much of every earlier edit survives each new one.

Issue 8, point 7 (docs/sequential_rome_easyedit.md). The first n CounterFact requests are
edited one after another into the same model, exactly as a pipeline segment does
(`rome.apply`, then `updates.apply_weight_update` with no regulariser), and after each
edit every edit so far is scored with `evaluate.editing.edit_metrics`:

- EasyEdit's definitions (the requests as style "zsre"): rewrite / rephrase = token
  accuracy of " " + target_new under teacher forcing, locality = share of the neighbourhood
  answer's positions where the edited model's argmax equals the unedited model's;
- ROME's CounterFact definitions: efficacy, paraphrase and neighbourhood success
  (P(new) > P(true), the reverse for neighbours).

Each line also gives the latest edit's own scores right after it ("immediate", what
EasyEdit's editor reports for sequential_edit=True since its commit 3c21b20), and the
geometry of the keys that explains the interference: for edit i with left vector u_i,
the share of its residual written into subject j's MLP output at the edited layer is
alpha_ij = (u_i . k0_j) / (u_i . k0_i) (k0 = a subject's key in its plain prompt).

    .venv/bin/python benchmarks/sequential_rome_retention.py --model cache/models/smollm2-135m \
        --hparams configs/methods/rome/llama-2-7b.yaml --layer 6 --out results/bench/easyedit.json

`--variant` changes one thing in this script (never in the library) to test a
hypothesis about EasyEdit:
  pipeline        editharm as it is;
  easyedit-code   EasyEdit's own ROME (easyeditor/models/rome, imported from the checkout
                  given by --easyedit) makes each update in place, as its editor does with
                  sequential_edit=True; scoring stays editharm's, so only the edit differs.
                  The layer, steps, lr, weight decay, clamp and KL come from --hparams; the
                  loss layer is the last one (EasyEdit's v_loss_layer). Llama-style models.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rome import corpus_texts, counterfact_requests, rome_setup  # noqa: E402

from editharm.evaluate.editing import edit_metrics, locality_reference, target_continuation, token_accuracy  # noqa: E402
from editharm.evaluate.engine import score_choices  # noqa: E402
from editharm.evaluate.tasks.base import ChoiceItem  # noqa: E402
from editharm.io import write_json  # noqa: E402
from editharm.methods import rome  # noqa: E402
from editharm.methods.base import EditContext  # noqa: E402
from editharm.methods.covariance import collect_second_moments  # noqa: E402
from editharm.methods.prompts import context_templates, subject_keys  # noqa: E402
from editharm.regularize import parse_regulariser  # noqa: E402
from editharm.updates import apply_weight_update  # noqa: E402
from editharm.api import mirror_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("pipeline", "easyedit-code")


def easyedit_rome(checkout: str):
    """EasyEdit's apply_rome_to_model and ROMEHyperParams from a checkout, without its package __init__.

    easyeditor/__init__.py imports every method and its dependencies; ROME needs only
    its own folder and util/, so the parent packages are registered as bare namespaces.
    `datasets` is imported by its layer_stats (covariance only) and stubbed when absent.
    """
    import importlib
    import importlib.util
    import types

    root = Path(checkout) / "easyeditor"
    if not (root / "models" / "rome" / "rome_main.py").exists():
        raise FileNotFoundError(f"--easyedit {checkout}: no easyeditor/models/rome/rome_main.py there; "
                                "pass the folder that holds EasyEdit's easyeditor/ package")
    for name, folder in (("easyeditor", root), ("easyeditor.util", root / "util"), ("easyeditor.models", root / "models")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    if importlib.util.find_spec("datasets") is None:
        stub = types.ModuleType("datasets")

        def load_dataset(*args, **kwargs):
            raise RuntimeError("datasets is not installed: EasyEdit's covariance statistics are unavailable")
        stub.load_dataset = load_dataset
        sys.modules["datasets"] = stub
    main = importlib.import_module("easyeditor.models.rome.rome_main")
    return main.apply_rome_to_model, main.ROMEHyperParams


def easyedit_hparams(cls, hp, n_layers: int):
    """EasyEdit's ROMEHyperParams for a Llama-style model with editharm's values (hparams/ROME/llama-7b.yaml layout)."""
    return cls(layers=[hp.layer], fact_token=hp.fact_token, v_num_grad_steps=hp.v_num_grad_steps, v_lr=hp.v_lr,
               v_loss_layer=n_layers - 1, v_weight_decay=hp.v_weight_decay, clamp_norm_factor=hp.clamp_norm_factor,
               kl_factor=hp.kl_factor, mom2_adjustment=False,
               context_template_length_params=hp.context_template_length_params,
               rewrite_module_tmp="model.layers.{}.mlp.down_proj", layer_module_tmp="model.layers.{}",
               mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
               ln_f_module="model.norm", lm_head_module="lm_head", mom2_dataset="wikipedia", mom2_n_samples=100000,
               mom2_dtype="float32", alg_name="ROME", device="cpu", model_name="smollm2", stats_dir="/nonexistent")


def key_geometry(keys: torch.Tensor, plain_keys: torch.Tensor, lefts: torch.Tensor) -> dict[str, float]:
    """Cosines between subjects' keys and the interference shares alpha_ij = (u_i . k0_j) / (u_i . k0_i).

    keys: k* per subject [R, d]; plain_keys: k0 [R, d]; lefts: u per subject [R, d].
    Off-diagonal means/medians over ordered pairs i != j.
    """
    def off(m):
        return m[~torch.eye(m.shape[0], dtype=torch.bool)]

    unit = torch.nn.functional.normalize(keys.double(), dim=1)
    cos = off(unit @ unit.T)
    mean_dir = torch.nn.functional.normalize(keys.double().mean(0), dim=0)
    u, k0 = lefts.double(), plain_keys.double()
    alpha = (u @ k0.T) / (u * k0).sum(1, keepdim=True)          # row i: edit i, column j: subject j
    a = off(alpha)
    return {"cos_keys_mean": float(cos.mean()), "cos_keys_min": float(cos.min()), "cos_keys_max": float(cos.max()),
            "cos_key_to_mean_direction": float((unit @ mean_dir).mean()),
            "alpha_mean": float(a.mean()), "alpha_median": float(a.median()), "alpha_abs_mean": float(a.abs().mean()),
            "alpha_max": float(a.max())}


def as_easyedit_style(requests):
    """The same requests scored with EasyEdit's definitions (token accuracy, argmax agreement)."""
    return [dataclasses.replace(r, style="zsre") for r in requests]


def scores(model, tokenizer, requests, ee_requests, reference, counterfact: bool = True) -> dict:
    """EasyEdit's rewrite / rephrase / locality, and (counterfact=True) ROME's efficacy / paraphrase / neighbourhood."""
    _, ee = edit_metrics(model, tokenizer, ee_requests, reference=reference, progress=False)
    out = {"rewrite": ee["reliability"], "rephrase": ee["generalization"], "locality": ee["locality"]}
    if counterfact:
        _, cf = edit_metrics(model, tokenizer, requests, progress=False)
        out.update(efficacy=cf["reliability"], paraphrase=cf["generalization"], neighbourhood=cf["locality"])
    return out


def answer_accuracy(model, tokenizer, requests) -> dict[str, float]:
    """Token accuracy (teacher forcing) of the dataset's own answers: target_new after the edit and
    paraphrase prompts, and target_true of the neighbours after the neighbourhood prompts.

    On the unedited model this tells whether a reported "locality" compares with the
    unedited model's predictions (1.0 before any edit) or with the dataset's answers.
    """
    kinds = {"rewrite": [], "rephrase": [], "locality_answer": []}
    items = []
    for r in requests:
        new = target_continuation(r.target_new)
        pairs = ([("rewrite", r.filled_prompt, new)] + [("rephrase", p, new) for p in r.paraphrases]
                 + [("locality_answer", p.prompt, target_continuation(p.target)) for p in r.locality])
        for i, (kind, prompt, answer) in enumerate(pairs):
            items.append((kind, r.case_id, ChoiceItem(f"{r.case_id}/{i}", prompt, (answer,), 0)))
    outputs = score_choices(model, tokenizer, [it for _, _, it in items], progress=False, token_details=True)
    per_case: dict[tuple[str, str], list[float]] = {}
    for (kind, case, _), out in zip(items, outputs):
        per_case.setdefault((kind, case), []).append(token_accuracy(out.argmax_ids[0], out.token_ids[0]))
    for (kind, _), accs in per_case.items():
        kinds[kind].append(sum(accs) / len(accs))   # per request first, then over requests (as edit_metrics)
    return {k: sum(v) / len(v) for k, v in kinds.items() if v}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "cache" / "models" / "smollm2-135m"))
    ap.add_argument("--hparams", default=str(ROOT / "configs/methods/rome/llama.yaml"))
    ap.add_argument("--layer", type=int, help="override the hparams layer")
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir, as the pipeline reads it)")
    ap.add_argument("--counterfact", help="ROME's CounterFact JSON (default: counterfact/counterfact_filtered.json in the mirror)")
    ap.add_argument("--corpus", help="tokenised WikiText file (default: wikitext2_tokenized/valid.txt in the mirror)")
    ap.add_argument("--cov-tokens", type=int, default=100000)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--variant", choices=VARIANTS, default="pipeline")
    ap.add_argument("--easyedit", help="folder holding EasyEdit's easyeditor/ package (variant easyedit-code)")
    ap.add_argument("--counterfact-every", type=int, default=0,
                    help="also score ROME's CounterFact metrics over all edits every K edits (0: after the last only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the per-edit rows and the key geometry as JSON here")
    args = ap.parse_args(argv)
    args.counterfact = args.counterfact or str(mirror_file("counterfact/counterfact_filtered.json", args.mirror))
    args.corpus = args.corpus or str(mirror_file("wikitext2_tokenized/valid.txt", args.mirror))

    torch.set_num_threads(args.threads)
    hp, model, tokenizer, layout = rome_setup(args.hparams, args.layer, args.model)
    requests = counterfact_requests(args.counterfact, args.n)
    ee_requests = as_easyedit_style(requests)
    cpu0 = time.process_time()
    print(f"model {args.model}  {hp}  variant {args.variant}  threads {torch.get_num_threads()}  "
          f"load {os.getloadavg()}", flush=True)

    # The statistic is needed for mom2_adjustment and for the geometry comparison
    # (alpha with u = C^-1 k*); --cov-tokens 0 skips it when neither is wanted.
    cov = None
    if args.cov_tokens > 0:
        t = time.process_time()
        cov = collect_second_moments(model, tokenizer, layout, [hp.layer], corpus_texts(args.corpus), args.cov_tokens,
                                     progress=False)[hp.layer]
        print(f"second moment of layer {hp.layer} over {args.cov_tokens} tokens: {time.process_time() - t:.1f} CPU s",
              flush=True)
    elif hp.mom2_adjustment:
        ap.error("mom2_adjustment: true needs the key statistic: --cov-tokens must be positive")
    context = EditContext(layout=layout, covariance=lambda layer: cov, seed=0)
    if args.variant == "easyedit-code":
        if not args.easyedit:
            ap.error("variant easyedit-code needs --easyedit (a folder holding EasyEdit's easyeditor/ package)")
        if hp.mom2_adjustment:
            ap.error("variant easyedit-code runs EasyEdit without its covariance (mom2_adjustment: false hparams)")
        apply_easyedit, ee_cls = easyedit_rome(args.easyedit)
        ee_hp = easyedit_hparams(ee_cls, hp, layout.n_layers)

    groups = context_templates(model, tokenizer, context, hp.context_template_length_params)
    k_star = subject_keys(model, tokenizer, layout, requests, [hp.layer], groups)[hp.layer]
    k_plain = subject_keys(model, tokenizer, layout, requests, [hp.layer], [["{}"]])[hp.layer]
    geometry = {"identity": key_geometry(k_star, k_plain, k_star)}
    if cov is not None:
        geometry["whitened"] = key_geometry(k_star, k_plain, context.solve_covariance(hp.layer, k_star.T).T)
    print("key geometry at layer", hp.layer, json.dumps(geometry), flush=True)

    reference = locality_reference(model, tokenizer, ee_requests, progress=False)
    base = scores(model, tokenizer, requests, ee_requests, reference)
    base["answer_accuracy"] = answer_accuracy(model, tokenizer, requests)
    print("unedited", json.dumps(base), flush=True)

    name = layout.down_weight_name(hp.layer)
    original = model.get_parameter(name).detach().clone()
    regulariser = parse_regulariser("none")
    rows = []
    for i, request in enumerate(requests):
        c = time.process_time()
        if args.variant == "easyedit-code":
            before = model.get_parameter(name).detach().clone()
            ee_request = {"prompt": request.prompt, "subject": request.subject, "target_new": request.target_new,
                          "ground_truth": request.target_true}
            with contextlib.redirect_stdout(io.StringIO()):   # EasyEdit prints every optimisation step
                apply_easyedit(model, tokenizer, [ee_request], ee_hp, copy=False, return_orig_weights=True,
                               keep_original_weight=False)
            info = {"steps": None, "update_norm": float((model.get_parameter(name).detach() - before).norm())}
        else:
            update = rome.apply(model, tokenizer, [request], hp, context)
            apply_weight_update(model, update, regulariser, seed=0, edit_index=i, where=f"edit {i}")
            info = update.info
        edit_cpu = time.process_time() - c
        so_far = slice(0, i + 1)
        row = {"edits": i + 1, "case": request.case_id, "steps": info["steps"], "edit_cpu_s": round(edit_cpu, 2),
               "update_norm": info["update_norm"],
               "weight_change_norm": float((model.get_parameter(name).detach() - original).norm()),
               "retained": scores(model, tokenizer, requests[so_far], ee_requests[so_far], reference,
                                  counterfact=(i + 1 == len(requests)
                                               or bool(args.counterfact_every and (i + 1) % args.counterfact_every == 0))),
               "immediate": scores(model, tokenizer, requests[i:i + 1], ee_requests[i:i + 1], reference)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:   # rewritten after every edit, so an interrupted run keeps what it measured
            write_json(args.out, {"geometry": geometry, "unedited": base, "rows": rows})

    # The keys at the edited layer come from layers below it and the layer's own gate/up
    # projections, which ROME never changes: recomputed on the edited model they are the same.
    k_after = subject_keys(model, tokenizer, layout, requests, [hp.layer], groups)[hp.layer]
    key_shift = float(((k_after - k_star).norm(dim=1) / k_star.norm(dim=1)).max())
    immediate = {k: sum(r["immediate"][k] for r in rows) / len(rows) for k in rows[0]["immediate"]}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {"hparams": dataclasses.asdict(hp), "variant": args.variant, "n": len(rows), "unedited": base,
               "geometry": geometry, "final_retained": rows[-1]["retained"], "mean_immediate": immediate,
               "max_relative_key_shift_after_edits": key_shift, "cpu_seconds": round(time.process_time() - cpu0, 1),
               "peak_rss_mb": round(usage.ru_maxrss / 1024), "load_average": os.getloadavg()}
    print("summary", json.dumps(summary), flush=True)
    if args.out:
        write_json(args.out, {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
