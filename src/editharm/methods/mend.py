"""MEND: gradient-decomposition hypernetwork editor (Mitchell et al., ICLR 2022, "Fast Model Editing at Scale").

For a linear layer W (out x in), the fine-tuning gradient of a loss over a sequence is
a sum over tokens of rank-one outer products, dL/dW = sum_t delta_t u_t^T, with u_t the
layer's input and delta_t the gradient of the loss w.r.t. the layer's output at token t.
MEND never forms that gradient. A small network g maps each token's pair (u_t, delta_t)
to a pseudo pair (u~_t, delta~_t), and the edit is

    dW = -alpha_l * sum_t delta~_t u~_t^T                (paper, eq. 4; alpha_l learned per layer)

g is, as in the paper (eq. 3) and in the reference code's published configuration
(EasyEdit hparams: combine, shared, IDMLP, init "id", norm):
  * inputs normalised to zero mean and unit variance with running statistics collected
    during meta-training (gradients are orders of magnitude smaller than activations);
  * u and delta concatenated, z = [u; delta];
  * n_hidden + 1 low-rank residual layers, h <- h + relu(s_l * (U V h + b) + o_l), with U
    initialised to zero so that g starts as the identity (a plain gradient step);
  * one network per weight shape, shared by every layer of that shape, with a per-layer
    scale s_l and shift o_l ("modes").

Meta-training (`train`, its own DAG rule): per step, edit a batch of training requests
with the current g, then minimise c_edit * NLL(target_new | paraphrase, edited model)
+ c_loc * KL(base || edited) on unrelated locality inputs with Adam; the per-layer step
sizes alpha_l get their own Adam with lr_lr. The base model stays frozen throughout.

Implementation notes (why):
  * The edited forward adds x @ dW^T to each edited module's output through a forward
    hook, which equals running the model with W + dW; no parameter is ever modified, so
    `apply` and `train` leave the model exactly as they found it.
  * (u, delta) are taken first-order, as in the reference implementation: delta is the
    gradient w.r.t. the module output, captured by adding a zero leaf tensor to that output.
  * The update's sign follows the paper (theta - alpha * grad~), so an untrained g makes
    a gradient-descent step; the reference code adds the update and learns the sign.
"""

from __future__ import annotations

import functools
import json
import random
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from editharm import nethook
from editharm.methods.base import EditContext, WeightUpdate
from editharm.requests import EditRequest

NAME = "mend"
SUPPORTS_BATCH = True
EDITS_WEIGHTS = True
TRAINED = True

WEIGHTS_FILE = "mend.safetensors"
META_FILE = "mend.json"
LOG_FILE = "training_log.jsonl"


@dataclass
class Hparams:
    """MEND hyperparameters; names follow the reference / EasyEdit configs where they exist.

    `inner_params` are weight-name templates with "{}" for the layer index, `layers`
    the layers to edit (negative values count from the end, so [-3, -2, -1] is the last
    three layers of any depth). `max_iters` counts training batches; the optimisers step
    every `accumulate_bs` batches (EasyEdit's convention).
    """

    inner_params: list[str]
    layers: list[int]
    rank: int = 1920
    n_hidden: int = 1
    combine: bool = True
    norm: bool = True
    edit_lr: float = 1e-4
    lr: float = 1e-6
    lr_lr: float = 1e-4
    cedit: float = 0.1
    cloc: float = 1.0
    max_iters: int = 100000
    batch_size: int = 1
    accumulate_bs: int = 10
    grad_clip: float = 100.0
    max_length: int = 64
    log_interval: int = 1


# ---------------------------------------------------------------- pure math

def pseudo_gradient(u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """sum_t delta_t u_t^T as an [out, in] matrix: the sum of one outer product per token row."""
    return delta.transpose(0, 1) @ u


def welford_merge(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, rows: torch.Tensor):
    """Fold a batch of rows into running (count, mean, M2) statistics (Chan et al.'s parallel update).

    Equivalent to the reference implementation's row-by-row Welford update, vectorised.
    """
    n_b = rows.shape[0]
    mean_b = rows.mean(0)
    m2_b = ((rows - mean_b) ** 2).sum(0)
    n = count + n_b
    d = mean_b - mean
    new_mean = mean + d * (n_b / n)
    new_m2 = m2 + m2_b + d * d * (count * n_b / n)
    return n, new_mean, new_m2


def kl_loc_loss(pre_logits: torch.Tensor, post_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(p_pre || p_post) (MEND's locality loss)."""
    pre = pre_logits[mask].float()
    post = post_logits[mask].float()
    pre_logp = pre.log_softmax(-1)
    return (pre_logp.exp() * (pre_logp - post.log_softmax(-1))).sum(-1).mean()


# ---------------------------------------------------------------- the hypernetwork

class LowRankResidual(nn.Module):
    """h + relu(scale[mode] * (U V h + b) + shift[mode]); U = 0 at init, so the layer starts as identity."""

    def __init__(self, dim: int, rank: int, n_modes: int):
        super().__init__()
        mid = min(rank, dim)
        self.U = nn.Parameter(torch.zeros(dim, mid))
        self.V = nn.Parameter(torch.randn(mid, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (h @ self.V.T) @ self.U.T + self.bias
        pre = pre * self.mode_scale[mode] + self.mode_shift[mode]
        # clamp rather than relu as in the reference: same values, gradient defined at 0
        return h + pre.clamp(min=0)


class ResidualMLP(nn.Module):
    def __init__(self, dim: int, rank: int, n_hidden: int, n_modes: int):
        super().__init__()
        self.layers = nn.ModuleList(LowRankResidual(dim, rank, n_modes) for _ in range(n_hidden + 1))

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, mode)
        return h


class GradientTransform(nn.Module):
    """g for one weight shape: normalise (u, delta), transform, return (u~, delta~)."""

    def __init__(self, in_dim: int, out_dim: int, hp: Hparams, n_modes: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.combine, self.norm = hp.combine, hp.norm
        for side, dim in (("u", in_dim), ("d", out_dim)):
            self.register_buffer(f"{side}_count", torch.zeros(()))
            self.register_buffer(f"{side}_mean", torch.zeros(dim))
            self.register_buffer(f"{side}_m2", torch.zeros(dim))
        if hp.combine:
            self.net = ResidualMLP(in_dim + out_dim, hp.rank, hp.n_hidden, n_modes)
        else:
            self.u_net = ResidualMLP(in_dim, hp.rank, hp.n_hidden, n_modes)
            self.d_net = ResidualMLP(out_dim, hp.rank, hp.n_hidden, n_modes)

    def update_stats(self, u: torch.Tensor, d: torch.Tensor) -> None:
        with torch.no_grad():
            self.u_count, self.u_mean, self.u_m2 = welford_merge(self.u_count, self.u_mean, self.u_m2, u)
            self.d_count, self.d_mean, self.d_m2 = welford_merge(self.d_count, self.d_mean, self.d_m2, d)

    def _standardise(self, x: torch.Tensor, side: str) -> torch.Tensor:
        count = getattr(self, f"{side}_count")
        if count < 2:
            raise RuntimeError("MEND normalisation needs statistics from at least two gradient rows; train first")
        std = (getattr(self, f"{side}_m2") / (count - 1)).sqrt()
        return (x - getattr(self, f"{side}_mean")) / (std + 1e-7)

    def forward(self, u: torch.Tensor, d: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            self.update_stats(u, d)
        if self.norm:
            u, d = self._standardise(u, "u"), self._standardise(d, "d")
        if self.combine:
            out = self.net(torch.cat([u, d], -1), mode)
            return out[:, : self.in_dim], out[:, self.in_dim:]
        return self.u_net(u, mode), self.d_net(d, mode)


def shape_key(in_dim: int, out_dim: int) -> str:
    return f"{in_dim}x{out_dim}"


class MendNetwork(nn.Module):
    """All transforms (one per weight shape) and the per-parameter edit step sizes."""

    def __init__(self, param_names: list[str], shapes: dict[str, tuple[int, int]], hp: Hparams):
        super().__init__()
        self.param_names = list(param_names)
        self.shapes = dict(shapes)  # name -> (in, out)
        by_shape: dict[str, list[str]] = {}
        for name in self.param_names:
            by_shape.setdefault(shape_key(*self.shapes[name]), []).append(name)
        self.modes = {name: names.index(name) for names in by_shape.values() for name in names}
        self.transforms = nn.ModuleDict({
            key: GradientTransform(*self.shapes[names[0]], hp, n_modes=len(names)) for key, names in by_shape.items()
        })
        self.edit_lrs = nn.Parameter(torch.full((len(self.param_names),), float(hp.edit_lr)))

    def hyper_parameters(self) -> list[nn.Parameter]:
        return list(self.transforms.parameters())

    def deltas(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """name -> dW [out, in] = -alpha * sum_t delta~_t u~_t^T."""
        out = {}
        for i, name in enumerate(self.param_names):
            u, d = factors[name]
            transform = self.transforms[shape_key(*self.shapes[name])]
            u_t, d_t = transform(u, d, self.modes[name])
            out[name] = -self.edit_lrs[i] * pseudo_gradient(u_t, d_t)
        return out


# ---------------------------------------------------------------- model plumbing

def resolve_param_names(model: nn.Module, hp: Hparams) -> list[str]:
    """Weight names from the templates and the (possibly negative) layer indices, checked against the model."""
    from editharm.models import layout_for

    n_layers = layout_for(model).n_layers
    names = []
    for layer in hp.layers:
        idx = layer % n_layers if -n_layers <= layer < n_layers else None
        if idx is None:
            raise ValueError(f"MEND layer {layer} is out of range for a model with {n_layers} layers")
        for template in hp.inner_params:
            names.append(template.format(idx))
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"MEND inner_params not in the model: {', '.join(missing)} (check configs/methods/mend/<family>.yaml)")
    return names


def _is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D stores its weight as [in, out] and computes x @ W + b.
    return type(module).__name__ == "Conv1D"


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def param_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, int]]:
    """name -> (in, out) of each edited linear map, whatever its storage layout."""
    shapes = {}
    for name in names:
        module = model.get_submodule(_module_of(name))
        w = model.get_parameter(name)
        shapes[name] = (w.shape[0], w.shape[1]) if _is_conv1d(module) else (w.shape[1], w.shape[0])
    return shapes


def to_storage(model: nn.Module, name: str, delta_out_in: torch.Tensor) -> torch.Tensor:
    return delta_out_in.T.contiguous() if _is_conv1d(model.get_submodule(_module_of(name))) else delta_out_in


@contextmanager
def hooked_outputs(model: nn.Module, names: list[str], fn: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While active, each named weight's module returns fn(name, input, output) instead of output."""
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(nethook.edit_output(model, _module_of(name), functools.partial(fn, name)))
        yield


def edited_forward(model: nn.Module, names: list[str], deltas: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the model with W + dW for each named weight (dW in [out, in]), without touching W."""

    def add_update(name, x, out):
        return out + (x.to(deltas[name].dtype) @ deltas[name].T).to(out.dtype)

    with hooked_outputs(model, names, add_update):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def encode(tokenizer, prompts: list[str], targets: list[str], max_length: int, device) -> dict[str, torch.Tensor]:
    """Right-padded prompt + " " + target sequences; labels hold the target tokens, -100 elsewhere.

    A prompt too long for max_length loses tokens from its left; targets are kept whole.
    """
    rows, labels = [], []
    for prompt, target in zip(prompts, targets):
        p = tokenizer(prompt)["input_ids"]
        t = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        p = p[-max(1, max_length - len(t)):]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        lab[i, : len(l)] = torch.tensor(l)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": lab.to(device)}


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled tokens (next-token shift applied)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


def gradient_factors(model: nn.Module, names: list[str], batch: dict[str, torch.Tensor]):
    """Per edited weight, the token rows (u_t, delta_t) of the NLL gradient on `batch`, plus the logits.

    Rows whose u or delta is all zero (padding, tokens after the last target) carry no
    gradient and are dropped, as in the reference implementation.
    """
    inputs: dict[str, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}

    def capture(name, x, out):
        inputs[name] = x.detach()
        leaves[name] = torch.zeros_like(out, requires_grad=True)
        return out + leaves[name]  # d loss / d leaf == d loss / d output

    with torch.enable_grad(), hooked_outputs(model, names, capture):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = target_nll(logits, batch["labels"])
        grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    factors = {}
    for name, g in zip(names, grads):
        u = inputs[name].reshape(-1, inputs[name].shape[-1]).float()
        d = g.reshape(-1, g.shape[-1]).float()
        keep = (u != 0).any(-1) & (d != 0).any(-1)
        factors[name] = (u[keep], d[keep])
    return factors, logits.detach(), loss.detach()


# ---------------------------------------------------------------- saving / loading

def save_network(net: MendNetwork, hp: Hparams, out_dir: Path) -> None:
    from safetensors.torch import save_file

    from editharm.io import atomic_path, write_json

    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_json(out_dir / META_FILE, {"param_names": net.param_names, "shapes": net.shapes, "hparams": asdict(hp)})


_CACHE: dict[tuple[str, float], MendNetwork] = {}


def load_network(trained_dir: str | Path, device) -> MendNetwork:
    """The trained network in trained_dir (cached per file and modification time)."""
    from safetensors.torch import load_file

    path = Path(trained_dir) / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: MEND needs its trained hypernetwork (the train rule's output)")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _CACHE:
        meta = json.loads((Path(trained_dir) / META_FILE).read_text())
        trained_hp = Hparams(**meta["hparams"])
        shapes = {n: tuple(s) for n, s in meta["shapes"].items()}
        net = MendNetwork(meta["param_names"], shapes, trained_hp)
        net.load_state_dict(load_file(str(path)))
        net.eval().requires_grad_(False)
        _CACHE.clear()
        _CACHE[key] = net
    net = _CACHE[key].to(device)
    return net


# ---------------------------------------------------------------- training

def _locality_row(request: EditRequest, pool: list[EditRequest], rng: random.Random) -> tuple[str, str]:
    """An unrelated (prompt, answer) for the KL term: the request's own locality probe, else another fact."""
    if request.locality:
        probe = rng.choice(request.locality)
        return probe.prompt, probe.target
    other = rng.choice([r for r in pool if r.case_id != request.case_id] or pool)
    return other.filled_prompt, other.target_true or other.target_new


def _outer_prompt(request: EditRequest, rng: random.Random) -> str:
    """x'_e from the equivalence neighbourhood: a paraphrase when there is one, else the edit prompt."""
    return rng.choice(request.paraphrases) if request.paraphrases else request.filled_prompt


def train(model, tokenizer, requests: list[EditRequest], hparams: Hparams, out_dir, seed: int) -> dict[str, Any]:
    """Meta-train MEND's hypernetwork on `requests`; writes mend.safetensors, mend.json, training_log.jsonl."""
    from editharm.io import write_jsonl

    if len(requests) < 1:
        raise ValueError("MEND training needs at least one request")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    names = resolve_param_names(model, hparams)
    net = MendNetwork(names, param_shapes(model, names), hparams).to(device)
    opt = torch.optim.Adam(net.hyper_parameters(), lr=hparams.lr)
    lr_opt = torch.optim.Adam([net.edit_lrs], lr=hparams.lr_lr)
    log: list[dict[str, Any]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    order: list[int] = []
    bar = tqdm(total=hparams.max_iters, desc="training MEND", unit="batch", mininterval=10.0)
    for it in range(hparams.max_iters):
        while len(order) < hparams.batch_size:
            order += rng.sample(range(len(requests)), len(requests))  # epochs of shuffled requests
        batch_reqs = [requests[order.pop()] for _ in range(hparams.batch_size)]
        stats = _train_step(model, tokenizer, net, names, batch_reqs, requests, hparams, rng, device)
        (stats.pop("loss_tensor") / hparams.accumulate_bs).backward()
        if (it + 1) % hparams.accumulate_bs == 0 or it + 1 == hparams.max_iters:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(list(net.parameters()), hparams.grad_clip))
            opt.step()
            lr_opt.step()
            opt.zero_grad()
            lr_opt.zero_grad()
        stats.update(iter=it, seconds=time.perf_counter() - start, edit_lr_mean=net.edit_lrs.detach().mean().item())
        if it % hparams.log_interval == 0 or it + 1 == hparams.max_iters:
            log.append(stats)
        bar.update(1)
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    net.eval()
    save_network(net, hparams, out_dir)
    write_jsonl(out_dir / LOG_FILE, log)
    window = max(1, len(log) // 10)
    return {
        "method": NAME, "iters": hparams.max_iters, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "n_requests": len(requests),
        "params": names, "loss_first": _mean(log[:window], "loss"), "loss_last": _mean(log[-window:], "loss"),
        "edit_nll_first": _mean(log[:window], "edit_nll"), "edit_nll_last": _mean(log[-window:], "edit_nll"),
        "loc_kl_last": _mean(log[-window:], "loc_kl"),
    }


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _train_step(model, tokenizer, net, names, batch_reqs, pool, hp: Hparams, rng, device) -> dict[str, Any]:
    """One meta-training batch: edit with g, then edit loss on paraphrases and KL on locality inputs."""
    b = len(batch_reqs)
    loc = [_locality_row(r, pool, rng) for r in batch_reqs]
    # One base pass over edit rows and locality rows: the NLL covers only the edit rows,
    # so locality rows get delta = 0 (dropped from the factors) and their logits are p_pre.
    first = encode(tokenizer, [r.filled_prompt for r in batch_reqs] + [p for p, _ in loc],
                   [r.target_new for r in batch_reqs] + [t for _, t in loc], hp.max_length, device)
    first["labels"][b:] = -100
    factors, logits_pre, nll_pre = gradient_factors(model, names, first)
    net.train()
    deltas = net.deltas(factors)
    second = encode(tokenizer, [_outer_prompt(r, rng) for r in batch_reqs] + [p for p, _ in loc],
                    [r.target_new for r in batch_reqs] + [t for _, t in loc], hp.max_length, device)
    second["labels"][b:] = -100
    logits_post = edited_forward(model, names, deltas, second)
    l_edit = target_nll(logits_post[:b], second["labels"][:b])
    width = min(logits_pre.shape[1], logits_post.shape[1])
    loc_mask = second["attention_mask"][b:, :width].bool()
    l_loc = kl_loc_loss(logits_pre[b:, :width], logits_post[b:, :width], loc_mask)
    loss = hp.cedit * l_edit + hp.cloc * l_loc
    if not torch.isfinite(loss):
        raise FloatingPointError(f"MEND training loss is not finite (edit {float(l_edit)}, loc {float(l_loc)}); lower lr or edit_lr")
    return {"loss_tensor": loss, "loss": loss.item(), "edit_nll": l_edit.item(), "loc_kl": l_loc.item(),
            "edit_nll_pre": float(nll_pre)}


# ---------------------------------------------------------------- editing

def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    """MEND's weight update for a batch of requests: one fine-tuning gradient, transformed by the trained g."""
    trained_dir = context.artifacts.get("trained_dir")
    if not trained_dir:
        raise ValueError("MEND needs context.artifacts['trained_dir'] (the folder written by its train rule)")
    device = next(model.parameters()).device
    net = load_network(trained_dir, device)
    names = resolve_param_names(model, hparams)
    if names != net.param_names:
        raise ValueError(f"MEND network in {trained_dir} edits {net.param_names}, but the hparams select {names}; retrain")
    batch = encode(tokenizer, [r.filled_prompt for r in requests], [r.target_new for r in requests], hparams.max_length, device)
    factors, _, nll = gradient_factors(model, names, batch)
    with torch.no_grad():
        deltas = net.deltas(factors)
    return WeightUpdate(
        deltas={n: to_storage(model, n, d.float()) for n, d in deltas.items()},
        info={"nll_before": float(nll), "token_rows": {n: int(f[0].shape[0]) for n, f in factors.items()}},
    )
