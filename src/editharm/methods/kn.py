"""KN: Knowledge Neurons (Dai et al., ACL 2022), as a fact-updating editor.

Reference: EasyEdit's KN (zjunlp/EasyEdit, easyeditor/models/kn/kn_main.py and
easyeditor/models/kn/knowledge_neurons/knowledge_neurons/knowledge_neurons.py), a fork of
the authors' EleutherAI/knowledge-neurons (knowledge_neurons/knowledge_neurons.py).

1. Attribution. For each prompt expressing the fact and each FFN intermediate neuron
   w_i^(l) (an input of layer l's MLP down projection) at the prompt's last token, the
   integrated gradient of the model's probability of the known answer t (target_true):

       Attr(w_i) = w_i * (1/m) * sum_{k=1..m} dP(k/m * w) / dw_i       (Riemann sum, m = steps)

   where the whole layer's activation vector w at that position is scaled from 0 to its
   value (as in the authors' and EasyEdit's code) and every other activation runs
   freely. A multi-token answer is attributed token by token under teacher forcing
   (prompt + the answer's first j tokens predicts token j) and the scores averaged.
2. Coarse neurons per prompt: Attr > t * max Attr (adaptive threshold t).
3. Refinement over the prompts (the edit prompt, plus its paraphrases with
   `use_paraphrases`): keep neurons found in MORE than p * (number of prompts) prompts
   (`refine: true`; strictly more, as both references: `count > t`), or the union of all
   prompts' neurons (`refine: false`, EasyEdit's default).
4. Update ("updating facts", EasyEdit's modify_weights): for every kept neuron (l, i), its
   value vector, column i of W_down^(l) in [out, in] view, becomes

       v_i - lambda_1 * sum_j e(o_j) + lambda_2 * sum_j e(t'_j)

   t'_1..t'_n are the new answer's tokens (target_new) and o_1..o_n the model's own greedy
   continuation of the edit prompt, n tokens long: what the model predicts at edit time,
   not target_true (EasyEdit: `_generate(prompt, target)` -> `argmax_tokens`). Each token
   enters with its own embedding (EasyEdit loops `-= oe` / `+= te` over the rows), so with
   lambda 1 a multi-token answer adds the SUM of its embeddings. When the new answer is one
   token the coefficients are lambda_1_single / lambda_2_single instead: EasyEdit then
   subtracts 2 x e(o_1) (its `argmax_tokens[0]` is a single id, and the authors' code
   multiplies by 2) but still adds 1 x e(t'_1) (the target ids are a list, so the row loop
   runs). With `scale_to_value_norm` each term is first rescaled to ||v_i||.

The method returns that change as a WeightUpdate on the touched layers' down
projections; every other element of every parameter is left exactly as it was.

Differences from EasyEdit, each on purpose:

- Which activation is a "neuron". EasyEdit hooks the OUTPUT of `mlp.gate_proj` (Llama,
  Qwen2, Mistral) or `mlp.c_fc` (GPT-2, GPT-J): the pre-activation, before SiLU x up_proj
  or GELU. Here it is the input of the down projection, the activation that multiplies the
  value vector the update edits, which is Dai et al.'s definition (their BERT code hooks
  `intermediate`, whose output is after the GELU). Attributing the gate's pre-activation
  scores a quantity the update does not act on.
- The integral's grid. EasyEdit scales by linspace(0, 1, m) (k/(m-1), k = 0..m-1, so
  m = 1 is the gradient at 0); here k/m, k = 1..m, Dai et al.'s Riemann sum.
- Multi-token attribution. EasyEdit (Llama) feeds the model's greedy continuation between
  the answer's tokens, and for GPT-2 (`model_type == "gpt"` never holds) scores every answer
  token at the prompt's last position; here the answer itself is fed (teacher forcing), so
  token j is scored where the model would have to produce it.
- Answer tokens. EasyEdit encodes the bare answer string (`tokenizer.encode(target)`: no
  leading space, and a BOS for tokenizers that add one, e.g. Llama-2's); here the answer's
  tokens are those that continue the prompt (`split_prompt_target`: " " + answer, no special
  tokens), the ids the model actually predicts. The greedy continuation appends token ids;
  EasyEdit decodes each to text and re-tokenises, which can merge tokens differently.
- A request without target_true (some zsRE records) is attributed to the model's own greedy
  first token; EasyEdit refuses such a request.

A norm after the MLP (Gemma's post_feedforward_layernorm, an RMSNorm without bias) makes
the layer's output invariant to scaling its whole activation vector, which is the path of
the integral: there sum_i w_i dP/dw_i = alpha dP/dalpha = 0 at every step, so a layer's
attributions cancel and they rank neurons by how much growing one turns the normalised
output toward the answer. A neuron that already owns the MLP's output scores little (it
cannot turn it further), though removing it would matter; the exact integral puts that
effect at alpha below sqrt(eps) / rms(output), about 1e-3, which a Riemann sum of 20
uniform steps never samples. Kept as the method defines it (the attribution site is Dai
et al.'s, the grid theirs), so Gemma results carry this reading (tests/test_kn.py).

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
    p: float = 0.7                      # refinement: a neuron must be found in more than p * n_prompts prompts
    refine: bool = False                # False: union over prompts (EasyEdit's default)
    use_paraphrases: bool = False       # attribute over the paraphrases too (the paper's prompt bags)
    lambda_1: float = 1.0               # per-token weight of the old (greedy) answer's embeddings, subtracted
    lambda_2: float = 1.0               # per-token weight of the new answer's embeddings, added
    lambda_1_single: float = 2.0        # lambda_1 when the new answer is one token (EasyEdit: 2)
    lambda_2_single: float = 1.0        # lambda_2 when the new answer is one token (EasyEdit: 1)
    scale_to_value_norm: bool = False   # rescale both embeddings to each value vector's norm
    embedding: str = "input"            # which embedding matrix gives e(t): input or output (unembedding)
    layers: list[int] | None = None     # layers searched; None: all

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("kn: steps and batch_size must be at least 1")
        if not 0.0 < self.adaptive_threshold <= 1.0:
            raise ValueError(f"kn: adaptive_threshold={self.adaptive_threshold} must lie in (0, 1]")
        if not 0.0 <= self.p < 1.0:
            # a neuron must be found in more than p * n prompts: p = 1 would keep nothing
            raise ValueError(f"kn: p={self.p} must lie in [0, 1) (refinement keeps count > p * n_prompts)")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"kn: embedding={self.embedding!r} is not one of {', '.join(EMBEDDINGS)}")


# ---------------------------------------------------------------- attribution

@torch.no_grad()
def _prefix_state(model, layout, layers: list[int], ids: torch.Tensor):
    """KV cache of ids[:-1] and the clean down-projection inputs at the last position, per layer."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        def grab(mod, args, layer=layer):
            seen[layer] = args[0][0, -1].detach().clone()
        handles.append(model.get_submodule(layout.mlp_down.format(layer)).register_forward_pre_hook(grab))
    try:
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values if ids.shape[1] > 1 else None
    return cache, torch.stack([seen[layer] for layer in layers])


def _integrated_gradients(model, layout, layers: list[int], ids: torch.Tensor, target: int, steps: int,
                          batch_size: int) -> torch.Tensor:
    """Attr of every intermediate neuron of `layers` at the last position of `ids` for token `target`: [len(layers), d_ff]."""
    cache, base = _prefix_state(model, layout, layers, ids)
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
            handles.append(model.get_submodule(layout.mlp_down.format(layers[li])).register_forward_pre_hook(patch))
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


def attribution_scores(model, tokenizer, prompt: str, answer_ids: list[int], prompt_ids: list[int], layout,
                       layers: list[int], steps: int, batch_size: int) -> torch.Tensor:
    """Attr averaged over the answer's tokens (teacher forcing): [len(layers), d_ff]."""
    device = next(model.parameters()).device
    total = None
    for j, token in enumerate(answer_ids):
        ids = torch.tensor([prompt_ids + answer_ids[:j]], device=device)
        attr = _integrated_gradients(model, layout, layers, ids, token, steps, batch_size)
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
    """Neurons found in more than p * len(per_prompt) prompts (or all found, without refinement), sorted.

    Strictly more, as EasyEdit's and the authors' get_refined_neurons (`count > t`).
    """
    counts = Counter(n for neurons in per_prompt for n in set(neurons))
    if not refine:
        return sorted(counts)
    t = p * len(per_prompt)
    return sorted(n for n, c in counts.items() if c > t)


# ---------------------------------------------------------------- the update

def _embedding_matrix(model, which: str) -> torch.Tensor:
    return (model.get_input_embeddings() if which == "input" else model.get_output_embeddings()).weight


def neuron_update(value_vectors: torch.Tensor, e_old: torch.Tensor, e_new: torch.Tensor, lambda_1: float,
                  lambda_2: float, scale_to_value_norm: bool) -> torch.Tensor:
    """The change of each value vector (rows of `value_vectors`, [n, d]): -l1 e_old + l2 e_new, [n, d].

    e_old and e_new are the answers' summed token embeddings (`answer_embedding`).
    """
    n = value_vectors.shape[0]
    l1 = torch.full((n, 1), lambda_1, dtype=torch.float32)
    l2 = torch.full((n, 1), lambda_2, dtype=torch.float32)
    if scale_to_value_norm:
        norms = value_vectors.float().norm(dim=1, keepdim=True)
        l1 = l1 * norms / e_old.float().norm()
        l2 = l2 * norms / e_new.float().norm()
    return -l1 * e_old.float()[None, :] + l2 * e_new.float()[None, :]


def answer_embedding(emb: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Sum of the embedding rows of `ids`, float32: each token with coefficient 1 (EasyEdit's row loop)."""
    if not ids:
        raise ValueError("kn: an answer with no tokens has no embedding")
    return emb[ids].float().sum(0)


def answer_coefficients(hparams: Hparams, n_new_tokens: int) -> tuple[float, float]:
    """(lambda_1, lambda_2) for a new answer of n tokens: the *_single pair when it is one token."""
    if n_new_tokens == 1:
        return hparams.lambda_1_single, hparams.lambda_2_single
    return hparams.lambda_1, hparams.lambda_2


def _layers(hparams: Hparams, layout) -> list[int]:
    layers = list(range(layout.n_layers)) if hparams.layers is None else list(hparams.layers)
    bad = [layer for layer in layers if not 0 <= layer < layout.n_layers]
    if bad or not layers:
        raise ValueError(f"kn: layers {bad or layers} invalid; the model has layers 0..{layout.n_layers - 1}")
    return layers


@torch.no_grad()
def greedy_continuation(model, prompt_ids: list[int], n: int) -> list[int]:
    """The model's own n-token greedy continuation of prompt_ids: what it predicts, the answer KN unlearns."""
    device = next(model.parameters()).device
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    if len(requests) != 1:
        raise ValueError(f"kn edits one request per operation (SUPPORTS_BATCH is False), got {len(requests)}")
    request = requests[0]
    layout = context.layout
    layers = _layers(hparams, layout)
    prompts = [request.filled_prompt] + (list(request.paraphrases) if hparams.use_paraphrases else [])

    per_prompt = []
    for prompt in prompts:
        if request.target_true is not None:
            prompt_ids, answer_ids = split_prompt_target(tokenizer, prompt, request.target_true)
        else:
            # No recorded old answer (some zsRE records): the model's own prediction is what it "knows".
            prompt_ids = tokenizer(prompt)["input_ids"]
            answer_ids = greedy_continuation(model, prompt_ids, 1)
        scores = attribution_scores(model, tokenizer, prompt, answer_ids, prompt_ids, layout, layers,
                                    hparams.steps, hparams.batch_size)
        per_prompt.append(coarse_neurons(scores, layers, hparams.adaptive_threshold))
    neurons = refine_neurons(per_prompt, hparams.p, hparams.refine)

    emb = _embedding_matrix(model, hparams.embedding).detach()
    prompt_ids, new_ids = split_prompt_target(tokenizer, request.filled_prompt, request.target_new)
    # The old answer is the model's prediction at edit time (EasyEdit), as long as the new one:
    # on a sequentially edited model that is what the model now says, not the dataset's target_true.
    old_ids = greedy_continuation(model, prompt_ids, len(new_ids))
    e_old = answer_embedding(emb, old_ids).cpu()
    e_new = answer_embedding(emb, new_ids).cpu()
    lambda_1, lambda_2 = answer_coefficients(hparams, len(new_ids))

    deltas: dict[str, torch.Tensor] = {}
    for layer in sorted({layer for layer, _ in neurons}):
        cols = torch.tensor([ni for lj, ni in neurons if lj == layer])
        name = layout.down_weight_name(layer)
        w = layout.linear_weight(model.get_parameter(name).detach()).cpu()   # [out, in]
        delta = torch.zeros(w.shape, dtype=torch.float32)
        delta[:, cols] = neuron_update(w[:, cols].T, e_old, e_new, lambda_1, lambda_2,
                                       hparams.scale_to_value_norm).T
        deltas[name] = layout.to_storage(delta)
    info = {"n_neurons": len(neurons), "neurons": [list(n) for n in neurons], "old_answer_ids": old_ids,
            "coarse_per_prompt": [len(c) for c in per_prompt]}
    return WeightUpdate(deltas=deltas, info=info)
