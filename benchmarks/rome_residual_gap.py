"""How far a ROME update leaves the plain prompt from v* (the residual of issue 8, point 1).

For each CounterFact case: |(W + dW) k0 + b - v*| / |v* - (W k0 + b)|, with k0 the plain
prompt's key. The current code gives ~0; run it with --src pointing at a checkout from
before d64f8ee to see the old gap (docs/bench_rome.md).

    .venv/bin/python benchmarks/rome_residual_gap.py --model <folder> --cov <second moment> [--src old/src]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cov", required=True, help="second-moment file of the edited layer (save_second_moment)")
    ap.add_argument("--mirror", help="dataset mirror folder (default: config.yaml's mirror_dir, as the pipeline reads it)")
    ap.add_argument("--counterfact", help="ROME's CounterFact JSON (default: counterfact/counterfact_filtered.json in the mirror)")
    ap.add_argument("--hparams", default=str(ROOT / "configs" / "methods" / "rome" / "llama.yaml"))
    ap.add_argument("--src", help="an editharm src/ folder to import instead of the installed one")
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args(argv)
    if not args.counterfact:
        from editharm.api import mirror_file

        args.counterfact = str(mirror_file("counterfact/counterfact_filtered.json", args.mirror))
    if args.src:
        # The installed editharm just found the mirror; forget it so that the imports below come from --src.
        for name in [m for m in sys.modules if m == "editharm" or m.startswith("editharm.")]:
            del sys.modules[name]
        sys.path.insert(0, args.src)
    import torch

    from editharm.editsets import convert_file
    from editharm.methods import load_hparams, rome
    from editharm.methods.base import EditContext
    from editharm.methods.covariance import load_second_moment
    from editharm.methods.prompts import fill, tokenize_at_subject
    from editharm.models import layout_for, load_model
    from editharm.nethook import capture
    from editharm.requests import EditRequest

    torch.set_num_threads(1)
    model, tok = load_model(args.model, device="cpu")
    layout = layout_for(model)
    hp = load_hparams(args.hparams, rome.Hparams)
    cov, _ = load_second_moment(args.cov)
    ctx = EditContext(layout=layout, covariance=lambda layer: cov, seed=0)
    module = layout.mlp_down.format(hp.layer)
    weight = layout.linear_weight(model.get_parameter(layout.down_weight_name(hp.layer)).detach()).double()
    bias = getattr(model.get_submodule(module), "bias", None)
    for row in convert_file("counterfact_rome", args.counterfact).rows[:args.n]:
        req = EditRequest.from_json(row)
        edit = rome.compute_rome(model, tok, req, hp, ctx)
        text, a, b = fill("{}", req.prompt, req.subject)
        ids, pos = tokenize_at_subject(tok, text, a, b)
        with capture(model, [module], inputs=True, outputs=True) as rec, torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        k0, unedited = rec[module].input[0, pos].double(), rec[module].output[0, pos].double()
        edited = (weight + edit.delta.double()) @ k0 + (0 if bias is None else bias.detach().double())
        gap = (edited - edit.value.double()).norm() / (edit.value.double() - unedited).norm()
        print(f"case {req.case_id}: |(W + dW) k0 + b - v*| / |delta| = {gap:.4f}", flush=True)


if __name__ == "__main__":
    main()
