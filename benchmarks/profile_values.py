"""Where one ROME value-optimisation step spends its time, against a plain-torch floor.

For each CounterFact request the script builds the ROME value problem exactly as
`rome.compute_rome` does and runs the optimisation loop of `values.optimize_values`
with a CPU-time stopwatch around each phase of a step:

    select     picking the cached prefix tensors of the rows (cached after step 1)
    forward    the suffix tokens through the layers above the edit (HF modules)
    unembed    final norm and lm_head at the loss positions only
    loss       log-softmax, target NLL, KL rows, per-request sums
    backward   autograd.grad with respect to the delta
    adam       the Adam update and the norm clamp
    python     the rest of the step (bookkeeping, early-stop checks)

The floor is the same work written in plain torch in the same process: one forward
and one backward of exactly the same suffix tokens, with the same cached prefix keys
and values, masks and rotary tables, through the same layer weights, then the final
norm, the head at the same positions and a log-softmax gather. No HF module call,
hook or Python bookkeeping is in it, so (step time) / (floor time) is what the
implementation adds on top of the arithmetic. Llama-family models only (SmolLM2).

    .venv/bin/python benchmarks/profile_values.py --model cache/models/smollm2-135m --n 5 --threads 1

CPU seconds are this process's (time.process_time); the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rome import counterfact_requests, rome_setup  # noqa: E402

from editharm.methods import rome  # noqa: E402
from editharm.methods.base import EditContext  # noqa: E402
from editharm.methods.values import ValueProblem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Stopwatch:
    """CPU seconds per named phase, summed over calls."""

    def __init__(self):
        self.cpu = defaultdict(float)
        self.calls = defaultdict(int)

    def __call__(self, name, fn, *args, **kwargs):
        c = time.process_time()
        out = fn(*args, **kwargs)
        self.cpu[name] += time.process_time() - c
        self.calls[name] += 1
        return out


def profiled_step(problem: ValueProblem, settings, deltas, active, watch: Stopwatch):
    """One optimisation step of optimize_values for the `active` requests, phase by phase."""
    sites = problem.sites
    leaves = {s: deltas[s][active].clone().requires_grad_(True) for s in sites}
    row_ids = [i for i, r in enumerate(problem.rows) if r.request in set(active)]
    with torch.enable_grad():
        row_d = problem._row_deltas(leaves, row_ids, active)
        buckets = watch("select", problem._select, row_ids)
        finals = [watch("forward", problem._run_bucket, sel, {s: d[local] for s, d in row_d.items()})
                  for local, sel in buckets]
        logits = watch("unembed", problem._loss_logits, finals, [local for local, _ in buckets], row_ids)

        def loss_fn():
            terms = problem._terms(logits, row_ids, active)
            idx = torch.tensor(active)
            ref_norm = {s: problem.references[s].norm(dim=-1) for s in sites}
            wd = sum(leaves[s].norm(dim=-1) / ref_norm[s][idx] ** 2 for s in sites)
            return settings.nll_factor * terms.nll + settings.kl_factor * terms.kl + settings.weight_decay * wd

        loss = watch("loss", loss_fn)
    grads = watch("backward", torch.autograd.grad, loss.sum(), [leaves[s] for s in sites])
    return loss.detach(), grads, leaves


def adam_step(state, deltas, grads, sites, settings, refs):
    b1, b2, eps = 0.9, 0.999, 1e-8
    state["t"] += 1
    t = state["t"]
    for s, g in zip(sites, grads):
        m, v = state["m"][s], state["v"][s]
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        new = deltas[s] - (settings.lr / (1 - b1 ** t)) * m / (v.sqrt() / math.sqrt(1 - b2 ** t) + eps)
        max_norm = settings.clamp_norm_factor * refs[s].norm(dim=-1)
        norm = new.norm(dim=-1)
        deltas[s] = new * torch.where(norm > max_norm, max_norm / norm.clamp_min(1e-30), torch.ones_like(norm))[:, None]


# ------------------------------------------------------------------ the plain-torch floor

def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def plain_layers(model, layout, start: int, sel: dict, h: torch.Tensor) -> torch.Tensor:
    """The Llama decoder layers start.. on suffix hidden states h, with the cached prefix, in plain torch ops."""
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // n_heads
    eps = cfg.rms_norm_eps
    cos, sin = sel["rope"]
    cos, sin = cos[:, None], sin[:, None]
    B, S, _ = h.shape
    for l in range(start, layout.n_layers):
        blk = model.get_submodule(layout.layer.format(l))
        a = blk.self_attn
        x = _rms(h, blk.input_layernorm.weight, eps)
        q = F.linear(x, a.q_proj.weight).view(B, S, n_heads, hd).transpose(1, 2)
        k = F.linear(x, a.k_proj.weight).view(B, S, n_kv, hd).transpose(1, 2)
        v = F.linear(x, a.v_proj.weight).view(B, S, n_kv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = torch.cat([sel["k"][l], k], dim=2)
        v = torch.cat([sel["v"][l], v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=sel["mask"], enable_gqa=True)
        h = h + F.linear(o.transpose(1, 2).reshape(B, S, -1), a.o_proj.weight)
        x = _rms(h, blk.post_attention_layernorm.weight, eps)
        mlp = blk.mlp
        h = h + F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
    return h


@torch.no_grad()
def check_floor(problem: ValueProblem, model, layout, deltas) -> float:
    """Largest difference between the plain-torch layers and the method's own pass (must be float noise)."""
    worst = 0.0
    for local, sel in problem._select(list(range(len(problem.rows)))):
        d = deltas["mlp"][torch.zeros(len(local), dtype=torch.long)]
        ours = problem._run_bucket(sel, {"mlp": d})
        h = torch.cat([sel["hidden"][:, :1] + d[:, None], sel["hidden"][:, 1:]], dim=1)
        plain = plain_layers(model, layout, problem.start, sel, h)
        worst = max(worst, float((ours - plain).abs().max() / ours.abs().max()))
    return worst


def floor_step(problem: ValueProblem, model, layout, active, deltas) -> float:
    """CPU seconds of one forward + backward of the step's tokens in plain torch; checks it matches."""
    row_ids = [i for i, r in enumerate(problem.rows) if r.request in set(active)]
    e_row, e_pos, e_tok = problem._entries(row_ids)
    edits = torch.tensor([problem.rows[i].edit for i in row_ids])
    e_suffix = e_pos - edits[e_row]
    buckets = problem._select(row_ids)
    norm_w, eps = model.get_submodule(layout.final_norm).weight, model.config.rms_norm_eps
    head = model.get_output_embeddings().weight
    c = time.process_time()
    leaf = deltas["mlp"][active].clone().requires_grad_(True)
    total = 0.0
    for local, sel in buckets:
        h = sel["hidden"]
        h = torch.cat([h[:, :1] + leaf[torch.zeros(len(local), dtype=torch.long)][:, None], h[:, 1:]], dim=1)
        h = plain_layers(model, layout, problem.start, sel, h)
        pick = torch.isin(e_row, local)
        slot = torch.searchsorted(local, e_row[pick])
        logits = F.linear(_rms(h[slot, e_suffix[pick]], norm_w, eps), head)
        logp = torch.log_softmax(logits, dim=-1)
        tok = e_tok[pick].clamp_min(0)
        total = total + logp.gather(1, tok[:, None]).sum()
    torch.autograd.grad(total, [leaf])
    return time.process_time() - c


def naive_step(problem: ValueProblem, deltas, active) -> float:
    """CPU seconds of one step computed as the reference code does: full forward passes with a hook."""
    c = time.process_time()
    leaves = {s: deltas[s][active].clone().requires_grad_(True) for s in problem.sites}
    with torch.enable_grad():
        terms = problem.losses(leaves, active, naive=True)
        torch.autograd.grad((terms.nll + terms.kl).sum(), list(leaves.values()))
    return time.process_time() - c


def matmul_work(problem: ValueProblem, model) -> dict:
    """Tokens, loss positions and the GFLOP of one step's matrix products (forward + input-gradient backward)."""
    cfg = model.config
    d, ff, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    rows = list(range(len(problem.rows)))
    tokens = sum(sel["hidden"].shape[0] * sel["hidden"].shape[1] for _, sel in problem._select(rows))
    positions = len(problem._entries(rows)[0])
    layers = problem.layout.n_layers - problem.start
    macs = tokens * layers * (2 * d * d + 2 * d * kv + 3 * d * ff) + positions * d * V
    # The backward computes input gradients only (the weights do not require grad): the same products again.
    return {"suffix_tokens": tokens, "loss_positions": positions, "gflop": 2 * 2 * macs / 1e9}


def matmul_peak(model, tokens: int) -> float:
    """GFLOP/s of one layer-shaped matrix product ([tokens, d] x [d, ff]) on this thread, measured now."""
    a = torch.randn(tokens, model.config.hidden_size)
    b = torch.randn(model.config.hidden_size, model.config.intermediate_size)
    for _ in range(3):
        a @ b
    reps, c = 0, time.process_time()
    while time.process_time() - c < 1.0:
        a @ b
        reps += 1
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * reps / (time.process_time() - c) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "cache" / "models" / "smollm2-135m"))
    ap.add_argument("--hparams", default=str(ROOT / "configs/methods/rome/llama.yaml"))
    ap.add_argument("--counterfact", required=True, help="ROME-format CounterFact file")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hp, model, tokenizer, layout = rome_setup(args.hparams, None, args.model)
    if layout.family != "llama":
        raise SystemExit(f"the plain-torch floor is written for the llama family, not {layout.family!r}")
    context = EditContext(layout=layout, covariance=lambda layer: None, seed=0)
    groups = rome.context_templates(model, tokenizer, context, hp.context_template_length_params)
    templates = [t for g in groups for t in g]
    settings = hp.value_settings() if hasattr(hp, "value_settings") else rome.value_settings(hp)
    watch = Stopwatch()
    naive_cpu = []
    floor_cpu, steps, prep_cpu, step_cpu, gap, gflop, tokens = 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0
    for req in counterfact_requests(args.counterfact, args.n):
        c = time.process_time()
        problem = ValueProblem(model, tokenizer, layout, [req], hp.layer, templates, sites=("mlp",))
        prep_cpu += time.process_time() - c
        deltas = {"mlp": torch.zeros_like(problem.references["mlp"])}
        gap = max(gap, check_floor(problem, model, layout, {"mlp": problem.references["mlp"] * 0.5}))
        if gap > 1e-4:
            raise SystemExit(f"the plain-torch floor computes something else (relative gap {gap:.2e})")
        state = {"t": 0, "m": {"mlp": torch.zeros_like(deltas["mlp"])}, "v": {"mlp": torch.zeros_like(deltas["mlp"])}}
        work = matmul_work(problem, model)
        tokens += work["suffix_tokens"]
        for _ in range(settings.num_steps - 1):
            gflop += work["gflop"]
            c = time.process_time()
            loss, grads, _ = profiled_step(problem, settings, deltas, [0], watch)
            watch("adam", adam_step, state, deltas, grads, problem.sites, settings, problem.references)
            step_cpu += time.process_time() - c
            floor_cpu += floor_step(problem, model, layout, [0], deltas)
            if steps % 6 == 0:
                naive_cpu.append(naive_step(problem, deltas, [0]))
            steps += 1
    phases = {k: v / steps for k, v in watch.cpu.items()}
    phases["python"] = step_cpu / steps - sum(phases.values())
    rows = len(problem.rows)
    report = {"model": args.model, "layer": hp.layer, "requests": args.n, "steps": steps, "rows_per_request": rows,
              "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "problem_setup_cpu_s_per_request": prep_cpu / args.n,
              "step_cpu_s": step_cpu / steps, "floor_cpu_s": floor_cpu / steps,
              "ratio_to_floor": step_cpu / floor_cpu,
              "reference_style_step_cpu_s": sum(naive_cpu) / len(naive_cpu),
              "suffix_tokens_per_step": tokens / args.n, "matmul_gflop_per_step": gflop / steps,
              "step_gflop_per_cpu_s": gflop / step_cpu, "floor_gflop_per_cpu_s": gflop / floor_cpu,
              "matmul_peak_gflop_per_s": matmul_peak(model, max(1, tokens // args.n)), "floor_relative_gap": gap, "phases_cpu_s_per_step": phases}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
