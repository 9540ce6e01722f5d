"""FT-L: constrained fine-tuning of one (or a few) MLP weight matrices.

The baseline of Zhu et al. (2020, "Modifying Memories in Transformer Models") as ROME
(Meng et al. 2022) and EasyEdit run it: Adam on the negative log-likelihood of
`target_new` given the edit prompt, updating only the chosen layers' MLP down
projection, with the L-infinity constraint ||W - W0||_inf <= epsilon enforced by
clamping W into [W0 - eps, W0 + eps] after every optimiser step. `norm_constraint:
null` turns the constraint off (plain FT, EasyEdit's `norm_constraint: false`).

Objectives (EasyEdit's `objective_optimization`):
  target_new   teacher-forced NLL of every target token after the prompt (mean per request)
  prompt_last  ROME's original FT-L loss: log-probabilities of all target tokens read at
               the prompt's last position (a bag of tokens at one position)

The prompt/target encoding and the NLL here are also what GRACE trains its values with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from editharm.methods.base import EditContext, WeightUpdate
from editharm.requests import EditRequest

NAME = "ft"
SUPPORTS_BATCH = True
EDITS_WEIGHTS = True

OBJECTIVES = ("target_new", "prompt_last")


@dataclass
class Hparams:
    layers: list[int]                       # layers whose MLP down projection is tuned
    num_steps: int = 25                     # epochs over the operation's requests
    lr: float = 5e-4
    weight_decay: float = 0.0
    norm_constraint: float | None = 5e-4    # epsilon of the L-inf bound; None: unconstrained
    batch_size: int = 1                     # requests per optimiser step inside one operation
    objective: str = "target_new"
    early_stop_loss: float = 1e-2           # stop once the epoch's mean loss is below this (EasyEdit)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"ft: objective={self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if not self.layers:
            raise ValueError("ft: layers must name at least one layer")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError(f"ft: norm_constraint={self.norm_constraint} must be positive (or null for no bound)")
        if self.batch_size < 1 or self.num_steps < 1:
            raise ValueError("ft: batch_size and num_steps must be at least 1")


# ---------------------------------------------------------------- prompt + target encoding

@dataclass
class PromptTargetBatch:
    """Right-padded prompt+target token ids and where the target sits in each row.

    `pred_pos[b, j]` is the position whose logits predict target token j of row b
    (the token before it), `target_ids[b, j]` that token; `target_mask` marks real
    (not padding) target tokens. `prompt_last[b]` is the last prompt token's position.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pred_pos: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    prompt_last: torch.Tensor
    prompt_lens: list[int] = field(default_factory=list)


def split_prompt_target(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of " " + target as it continues that prompt.

    The target is read off the tokenisation of the full text when the prompt's tokens
    are its prefix (true for byte-level BPE and for SentencePiece with its dummy
    prefix), so the ids are exactly those a model sees when scoring; otherwise the
    target is tokenised on its own without special tokens (ROME's convention).
    """
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    full_ids = list(tokenizer(prompt + " " + target)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and full_ids and full_ids[-1] == eos and prompt_ids and prompt_ids[-1] == eos:
        # a tokenizer that appends EOS to every text: the prompt is a prefix only without it
        prompt_ids, full_ids = prompt_ids[:-1], full_ids[:-1]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return prompt_ids, full_ids[len(prompt_ids):]
    return prompt_ids, list(tokenizer(" " + target, add_special_tokens=False)["input_ids"])


def encode_prompt_target(tokenizer, prompts: Sequence[str], targets: Sequence[str], device) -> PromptTargetBatch:
    pairs = [split_prompt_target(tokenizer, p, t) for p, t in zip(prompts, targets, strict=True)]
    for (p_ids, t_ids), prompt, target in zip(pairs, prompts, targets):
        if not p_ids or not t_ids:
            raise ValueError(f"prompt {prompt!r} or target {target!r} tokenises to nothing")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) + len(t) for p, t in pairs)
    n_tgt = max(len(t) for _, t in pairs)
    b = len(pairs)
    input_ids = torch.full((b, width), pad, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    pred_pos = torch.zeros((b, n_tgt), dtype=torch.long)
    target_ids = torch.zeros((b, n_tgt), dtype=torch.long)
    target_mask = torch.zeros((b, n_tgt), dtype=torch.bool)
    for row, (p_ids, t_ids) in enumerate(pairs):
        ids = p_ids + t_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        n = len(t_ids)
        pred_pos[row, :n] = torch.arange(len(p_ids) - 1, len(p_ids) - 1 + n)
        target_ids[row, :n] = torch.tensor(t_ids)
        target_mask[row, :n] = True
    prompt_last = torch.tensor([len(p) - 1 for p, _ in pairs])
    return PromptTargetBatch(input_ids.to(device), attention.to(device), pred_pos.to(device), target_ids.to(device),
                             target_mask.to(device), prompt_last.to(device), [len(p) for p, _ in pairs])


def target_nll(logits: torch.Tensor, batch: PromptTargetBatch) -> torch.Tensor:
    """Mean negative log-likelihood of each row's target tokens (teacher forcing), shape [B]."""
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    picked = logits[rows, batch.pred_pos].float().log_softmax(-1)          # [B, n_tgt, V]
    token_lp = picked.gather(-1, batch.target_ids[..., None]).squeeze(-1)  # [B, n_tgt]
    mask = batch.target_mask.float()
    return -(token_lp * mask).sum(1) / mask.sum(1)


def prompt_last_nll(logits: torch.Tensor, batch: PromptTargetBatch) -> torch.Tensor:
    """ROME's FT-L loss: every target token's log-probability at the prompt's last position, shape [B]."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    lp = logits[rows, batch.prompt_last].float().log_softmax(-1)           # [B, V]
    token_lp = lp.gather(-1, batch.target_ids)                             # [B, n_tgt]
    mask = batch.target_mask.float()
    return -(token_lp * mask).sum(1) / mask.sum(1)


def linf_clamp_(weight: torch.Tensor, original: torch.Tensor, eps: float) -> None:
    """Project `weight` in place onto the L-inf ball of radius eps around `original`."""
    weight.copy_(torch.clamp(weight, min=original - eps, max=original + eps))


# ---------------------------------------------------------------- the method

def _tuned_names(model, hparams: Hparams, layout) -> list[str]:
    names = []
    for layer in hparams.layers:
        if not 0 <= layer < layout.n_layers:
            raise ValueError(f"ft: layer {layer} does not exist; the model has layers 0..{layout.n_layers - 1}")
        names.append(layout.down_weight_name(layer))
    return names


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    layout = context.layout
    names = _tuned_names(model, hparams, layout)
    weights = {n: model.get_parameter(n) for n in names}
    originals = {n: w.detach().clone() for n, w in weights.items()}
    device = next(iter(weights.values())).device
    loss_fn = target_nll if hparams.objective == "target_new" else prompt_last_nll

    # Tokenise once: the inputs do not change between steps.
    chunks = [requests[i:i + hparams.batch_size] for i in range(0, len(requests), hparams.batch_size)]
    batches = [encode_prompt_target(tokenizer, [r.filled_prompt for r in c], [r.target_new for r in c], device) for c in chunks]

    losses: list[float] = []
    steps = 0
    try:
        for w in weights.values():
            w.requires_grad_(True)
        opt = torch.optim.Adam(list(weights.values()), lr=hparams.lr, weight_decay=hparams.weight_decay)
        for _ in range(hparams.num_steps):
            epoch_loss, epoch_n = 0.0, 0
            for batch in batches:
                opt.zero_grad(set_to_none=True)
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                loss = loss_fn(logits, batch).mean()
                n = batch.input_ids.shape[0]
                epoch_loss += loss.item() * n
                epoch_n += n
                # EasyEdit skips the step on an already-learnt batch; stepping would only add drift.
                if loss.item() >= hparams.early_stop_loss:
                    loss.backward()
                    opt.step()
                    steps += 1
                if hparams.norm_constraint is not None:
                    with torch.no_grad():
                        for name, w in weights.items():
                            linf_clamp_(w, originals[name], hparams.norm_constraint)
            losses.append(epoch_loss / epoch_n)
            if losses[-1] < hparams.early_stop_loss:
                break
        with torch.no_grad():
            deltas = {}
            for name, w in weights.items():
                delta = (w.detach() - originals[name]).float()
                if hparams.norm_constraint is not None:
                    # W - W0 of a clamped W can exceed eps by one rounding error; the returned
                    # update honours the bound exactly.
                    delta = delta.clamp(-hparams.norm_constraint, hparams.norm_constraint)
                deltas[name] = delta
    finally:
        with torch.no_grad():
            for name, w in weights.items():
                w.requires_grad_(False)
                w.copy_(originals[name])
    info = {"steps": steps, "epochs": len(losses), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "max_abs_delta": max(float(d.abs().max()) for d in deltas.values())}
    return WeightUpdate(deltas=deltas, info=info)
