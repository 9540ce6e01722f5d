"""Benchmark ROME on a real model: seconds per edit, optimisation steps, efficacy.

Each CounterFact request is edited on its own: the update is added, the edit prompt
(and its paraphrases and neighbourhood prompts) is scored, and the original weight is
put back, so every edit starts from the unedited model.

    .venv/bin/python benchmarks/bench_rome.py [--model /tmp/smol] [--n 20] [--threads 1]

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
from editharm.methods.values import target_ids
from editharm.editsets import convert_file
from editharm.models import facts_for, load_model
from editharm.requests import EditRequest

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


def corpus_texts(path: str | Path) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if len(line.split()) > 3]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/smol")
    ap.add_argument("--hparams", default=str(ROOT / "configs/methods/rome/llama.yaml"))
    ap.add_argument("--counterfact", default="/work/shared/data/counterfact/counterfact_filtered.json")
    ap.add_argument("--corpus", default="/work/shared/data/wikitext2_tokenized/valid.txt")
    ap.add_argument("--cov", help="second-moment file (save_second_moment); computed from --corpus when absent")
    ap.add_argument("--cov-tokens", type=int, default=20000)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--layer", type=int, help="override the hparams layer")
    ap.add_argument("--threads", type=int, help="torch threads (1 is faster than 2 on a loaded shared machine)")
    ap.add_argument("--no-generalization", action="store_true", help="score only the edit prompt")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    hp = load_hparams(args.hparams, rome.Hparams)
    if args.layer is not None:
        hp = dataclasses.replace(hp, layer=args.layer)
    model, tokenizer = load_model(args.model, device="cpu")
    facts = facts_for(model)
    print(f"model {args.model}  layer {hp.layer}  threads {torch.get_num_threads()}  load {os.getloadavg()}", flush=True)

    cov = None
    if hp.mom2_adjustment:
        if args.cov:
            cov, meta = load_second_moment(args.cov)
            print(f"second moment from {args.cov}: {meta}")
        else:
            t = time.perf_counter()
            cov = collect_second_moments(model, tokenizer, facts, [hp.layer], corpus_texts(args.corpus), args.cov_tokens)[hp.layer]
            print(f"second moment of layer {hp.layer} over {args.cov_tokens} tokens: {time.perf_counter() - t:.1f} s", flush=True)
    context = EditContext(facts=facts, covariance=lambda layer: cov, seed=0)

    t = time.perf_counter()
    rome.context_templates(model, tokenizer, context, hp.context_template_length_params)
    print(f"context templates: {time.perf_counter() - t:.1f} s", flush=True)

    requests = counterfact_requests(args.counterfact, args.n)
    param = model.get_parameter(facts.down_weight_name(hp.layer))
    original = param.detach().clone()
    rows = []
    for req in requests:
        t, c = time.perf_counter(), time.process_time()
        update = rome.apply(model, tokenizer, [req], hp, context)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        with torch.no_grad():
            param += update.deltas[facts.down_weight_name(hp.layer)]
        eff = success(model, tokenizer, [req.filled_prompt], req.target_new, req.target_true)[0]
        row = {"case": req.case_id, "seconds": seconds, "cpu_seconds": cpu, "steps": update.info["steps"],
               "loss": update.info["loss"],
               "efficacy": eff}
        if not args.no_generalization:
            para = success(model, tokenizer, list(req.paraphrases), req.target_new, req.target_true)
            neigh = success(model, tokenizer, [p.prompt for p in req.locality], req.target_new, req.target_true)
            row["paraphrase"] = sum(para) / max(1, len(para))
            row["neighbourhood"] = sum(not x for x in neigh) / max(1, len(neigh))
        with torch.no_grad():
            param.copy_(original)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    print(f"\nROME on {args.model}, layer {hp.layer}, {len(rows)} CounterFact edits, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()}")
    print(f"median seconds per edit: {statistics.median(r['seconds'] for r in rows):.2f}")
    print(f"mean seconds per edit:   {statistics.mean(r['seconds'] for r in rows):.2f}")
    # CPU time of this process: what the edit costs without other jobs competing for the cores.
    print(f"median CPU seconds per edit: {statistics.median(r['cpu_seconds'] for r in rows):.2f}")
    print(f"optimisation steps: median {statistics.median(r['steps'] for r in rows)}, mean {statistics.mean(r['steps'] for r in rows):.1f}")
    print(f"efficacy: {sum(r['efficacy'] for r in rows) / len(rows):.3f}")
    if not args.no_generalization:
        print(f"paraphrase: {statistics.mean(r['paraphrase'] for r in rows):.3f}")
        print(f"neighbourhood: {statistics.mean(r['neighbourhood'] for r in rows):.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
