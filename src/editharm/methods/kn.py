"""KN: Knowledge Neurons (Dai et al., ACL 2022), as a fact-updating editor.

1. Attribution. For each prompt expressing the fact and each FFN intermediate neuron
   w_i^(l) (an input of layer l's MLP down projection) at the prompt's last token, the
   integrated gradient of the model's probability of the known answer t:

       Attr(w_i) = w_i * (1/m) * sum_{k=1..m} dP(k/m * w) / dw_i       (Riemann sum, m = steps)

   where the whole layer's activation vector w at that position is scaled from 0 to its
   value (as in the authors' and EasyEdit's code) and every other activation runs
   freely. A multi-token answer is attributed token by token under teacher forcing
   (prompt + the answer's first j tokens predicts token j) and the scores averaged,
   which is EasyEdit's treatment of autoregressive models with the answer fed in
   instead of the model's greedy continuation.
2. Coarse neurons per prompt: Attr > t * max Attr (adaptive threshold t).
3. Refinement over the prompts (the edit prompt, plus its paraphrases with
   `use_paraphrases`): keep neurons found for at least a fraction p of the prompts
   (`refine: true`), or the union of all prompts' neurons (`refine: false`, EasyEdit).
4. Update ("updating facts"): for every kept neuron (l, i), its value vector, column i
   of W_down^(l) in [out, in] view, becomes
       v_i - lambda_1 * e(t) + lambda_2 * e(t')
   with e the word embedding of the old answer t (target_true) and the new t'
   (target_new); a multi-token answer uses the mean of its tokens' embeddings. With
   `scale_to_value_norm` each term is first rescaled to ||v_i|| (the authors' code).

The method returns that change as a WeightUpdate on the touched layers' down
projections; every other element of every parameter is left exactly as it was.

Speed: scaling the activation at the last position changes nothing before it, so the
prefix runs once with a KV cache and each (layer, step) row of the integral is a
one-token forward pass, `batch_size` rows at a time.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch

from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.ft import split_prompt_target
from editharm.requests import EditRequest

NAME = "kn"
SUPPORTS_BATCH = False
EDITS_WEIGHTS = True

EMBEDDINGS = ("input", "output")


@dataclass
class Hparams:
    steps: int = 20                     # m, Riemann steps of the integrated gradient
    batch_size: int = 20                # (layer, step) rows per forward pass
    adaptive_threshold: float = 0.2     # t: coarse neurons have Attr > t * max Attr
    p: float = 0.7                      # refinement: share of prompts a neuron must be found in
    refine: bool = False                # False: union over prompts (EasyEdit's default)
    use_paraphrases: bool = False       # attribute over the paraphrases too (the paper's prompt bags)
    lambda_1: float = 1.0               # weight of the old answer's embedding, subtracted
    lambda_2: float = 1.0               # weight of the new answer's embedding, added
    scale_to_value_norm: bool = False   # rescale both embeddings to each value vector's norm
    embedding: str = "input"            # which embedding matrix gives e(t): input or output (unembedding)
    layers: list[int] | None = None     # layers searched; None: all

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("kn: steps and batch_size must be at least 1")
        if not 0.0 < self.adaptive_threshold <= 1.0:
            raise ValueError(f"kn: adaptive_threshold={self.adaptive_threshold} must lie in (0, 1]")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"kn: p={self.p} must lie in [0, 1]")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"kn: embedding={self.embedding!r} is not one of {', '.join(EMBEDDINGS)}")


# ---------------------------------------------------------------- attribution

@torch.no_grad()
def _prefix_state(model, facts, layers: list[int], ids: torch.Tensor):
    """KV cache of ids[:-1] and the clean down-projection inputs at the last position, per layer."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        def grab(mod, args, layer=layer):
            seen[layer] = args[0][0, -1].detach().clone()
        handles.append(model.get_submodule(facts.mlp_down.format(layer)).register_forward_pre_hook(grab))
    try:
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values if ids.shape[1] > 1 else None
    return cache, torch.stack([seen[layer] for layer in layers])


def _integrated_gradients(model, facts, layers: list[int], ids: torch.Tensor, target: int, steps: int,
                          batch_size: int) -> torch.Tensor:
    """Attr of every intermediate neuron of `layers` at the last position of `ids` for token `target`: [len(layers), d_ff]."""
    cache, base = _prefix_state(model, facts, layers, ids)
    alphas = torch.arange(1, steps + 1, device=base.device, dtype=base.dtype) / steps
    rows = [(li, k) for li in range(len(layers)) for k in range(steps)]
    grad_sum = torch.zeros_like(base)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = len(chunk)
        # One leaf per layer in the chunk: the scaled activations of the rows patched there.
        leaves: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for li in sorted({li for li, _ in chunk}):
            row_idx = torch.tensor([r for r, (lj, _) in enumerate(chunk) if lj == li], device=base.device)
            step_idx = torch.tensor([k for lj, k in chunk if lj == li], device=base.device)
            leaf = (alphas[step_idx, None] * base[li][None, :]).requires_grad_(True)
            leaves[li] = (row_idx, step_idx, leaf)
        handles = []
        for li, (row_idx, _, leaf) in leaves.items():
            def patch(mod, args, row_idx=row_idx, leaf=leaf):
                x = args[0]
                pos = torch.full_like(row_idx, x.shape[1] - 1)
                return (x.index_put((row_idx, pos), leaf.to(x.dtype)),) + tuple(args[1:])
            handles.append(model.get_submodule(facts.mlp_down.format(layers[li])).register_forward_pre_hook(patch))
        try:
            kwargs = {}
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(n)
                kwargs = {"past_key_values": past,
                          "attention_mask": torch.ones(n, ids.shape[1], dtype=torch.long, device=ids.device)}
            with torch.enable_grad():
                logits = model(input_ids=ids[:, -1:].expand(n, 1), use_cache=False, **kwargs).logits[:, -1]
                prob = logits.float().softmax(-1)[:, target]
                grads = torch.autograd.grad(prob.sum(), [leaf for _, _, leaf in leaves.values()])
        finally:
            for h in handles:
                h.remove()
        for (li, _), grad in zip(leaves.items(), grads):
            grad_sum[li] += grad.sum(0)
    return base * grad_sum / steps


def attribution_scores(model, tokenizer, prompt: str, answer_ids: list[int], prompt_ids: list[int], facts,
                       layers: list[int], steps: int, batch_size: int) -> torch.Tensor:
    """Attr averaged over the answer's tokens (teacher forcing): [len(layers), d_ff]."""
    device = next(model.parameters()).device
    total = None
    for j, token in enumerate(answer_ids):
        ids = torch.tensor([prompt_ids + answer_ids[:j]], device=device)
        attr = _integrated_gradients(model, facts, layers, ids, token, steps, batch_size)
        total = attr if total is None else total + attr
    return total / len(answer_ids)


def coarse_neurons(scores: torch.Tensor, layers: list[int], adaptive_threshold: float) -> list[tuple[int, int]]:
    """(layer, neuron) pairs whose attribution exceeds t * the maximum attribution."""
    top = float(scores.max())
    if top <= 0:
        return []
    hits = torch.nonzero(scores > adaptive_threshold * top).tolist()
    return [(layers[li], ni) for li, ni in hits]


def refine_neurons(per_prompt: list[list[tuple[int, int]]], p: float, refine: bool) -> list[tuple[int, int]]:
    """Neurons shared by at least a fraction p of the prompts (or all found, without refinement), sorted."""
    counts = Counter(n for neurons in per_prompt for n in set(neurons))
    if not refine:
        return sorted(counts)
    need = p * len(per_prompt)
    return sorted(n for n, c in counts.items() if c >= need)


# ---------------------------------------------------------------- the update

def _embedding_matrix(model, which: str) -> torch.Tensor:
    return (model.get_input_embeddings() if which == "input" else model.get_output_embeddings()).weight


def neuron_update(value_vectors: torch.Tensor, e_old: torch.Tensor, e_new: torch.Tensor, lambda_1: float,
                  lambda_2: float, scale_to_value_norm: bool) -> torch.Tensor:
    """The change of each value vector (rows of `value_vectors`, [n, d]): -l1 e_old + l2 e_new, [n, d]."""
    n = value_vectors.shape[0]
    l1 = torch.full((n, 1), lambda_1, dtype=torch.float32)
    l2 = torch.full((n, 1), lambda_2, dtype=torch.float32)
    if scale_to_value_norm:
        norms = value_vectors.float().norm(dim=1, keepdim=True)
        l1 = l1 * norms / e_old.float().norm()
        l2 = l2 * norms / e_new.float().norm()
    return -l1 * e_old.float()[None, :] + l2 * e_new.float()[None, :]


def _layers(hparams: Hparams, facts) -> list[int]:
    layers = list(range(facts.n_layers)) if hparams.layers is None else list(hparams.layers)
    bad = [layer for layer in layers if not 0 <= layer < facts.n_layers]
    if bad or not layers:
        raise ValueError(f"kn: layers {bad or layers} invalid; the model has layers 0..{facts.n_layers - 1}")
    return layers


@torch.no_grad()
def _greedy_token(model, prompt_ids: list[int]) -> int:
    device = next(model.parameters()).device
    return int(model(input_ids=torch.tensor([prompt_ids], device=device)).logits[0, -1].argmax())


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    if len(requests) != 1:
        raise ValueError(f"kn edits one request per operation (SUPPORTS_BATCH is False), got {len(requests)}")
    request = requests[0]
    facts = context.facts
    layers = _layers(hparams, facts)
    prompts = [request.filled_prompt] + (list(request.paraphrases) if hparams.use_paraphrases else [])

    per_prompt = []
    for prompt in prompts:
        if request.target_true is not None:
            prompt_ids, answer_ids = split_prompt_target(tokenizer, prompt, request.target_true)
        else:
            # No recorded old answer (some zsRE records): the model's own prediction is what it "knows".
            prompt_ids = tokenizer(prompt)["input_ids"]
            answer_ids = [_greedy_token(model, prompt_ids)]
        scores = attribution_scores(model, tokenizer, prompt, answer_ids, prompt_ids, facts, layers,
                                    hparams.steps, hparams.batch_size)
        per_prompt.append(coarse_neurons(scores, layers, hparams.adaptive_threshold))
    neurons = refine_neurons(per_prompt, hparams.p, hparams.refine)

    emb = _embedding_matrix(model, hparams.embedding).detach()
    _, new_ids = split_prompt_target(tokenizer, request.filled_prompt, request.target_new)
    if request.target_true is not None:
        _, old_ids = split_prompt_target(tokenizer, request.filled_prompt, request.target_true)
    else:
        old_ids = [_greedy_token(model, tokenizer(request.filled_prompt)["input_ids"])]
    e_old = emb[old_ids].float().mean(0).cpu()
    e_new = emb[new_ids].float().mean(0).cpu()

    deltas: dict[str, torch.Tensor] = {}
    for layer in sorted({layer for layer, _ in neurons}):
        cols = torch.tensor([ni for lj, ni in neurons if lj == layer])
        name = facts.down_weight_name(layer)
        w = facts.linear_weight(model.get_parameter(name).detach()).cpu()   # [out, in]
        delta = torch.zeros(w.shape, dtype=torch.float32)
        delta[:, cols] = neuron_update(w[:, cols].T, e_old, e_new, hparams.lambda_1, hparams.lambda_2,
                                       hparams.scale_to_value_norm).T
        deltas[name] = facts.to_storage(delta)
    info = {"n_neurons": len(neurons), "neurons": [list(n) for n in neurons],
            "coarse_per_prompt": [len(c) for c in per_prompt]}
    return WeightUpdate(deltas=deltas, info=info)
