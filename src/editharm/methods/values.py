"""The target-value optimisation of ROME, MEMIT, PMET and AlphaEdit (ROME's eq. 4).

ROME (Meng et al. 2022, eq. 4) finds the value v* that makes the model say the new
object: a vector delta is added to an output at the subject's last token of several
context-prefixed prompts (prompts.py) and optimised with Adam against

    NLL(target_new | prompt)  averaged over context templates
  + kl_factor * KL(edited || original) on "{subject} is a" at the subject's last token
  + weight_decay * ||delta|| / ||v||^2,

with ||delta|| clamped to clamp_norm_factor * ||v|| and an early stop once the loss is
below 5e-2. MEMIT and AlphaEdit optimise the residual stream of their last edited
layer the same way, PMET the attention and MLP outputs together. `ValueProblem` holds
one batch of requests, so MEMIT optimises all of its z vectors in one batched pass;
each request keeps its own loss, early stop and Adam state, so a batch gives the same
vectors as optimising the requests one after another. `ValueHparams` holds the
hyperparameters of this optimisation that the four methods share (their YAML keys).

Speed. Everything that does not change between optimisation steps is computed once:
tokenisation, the unedited activations, and - since attention is causal and delta
enters at the subject's last token - the attention keys/values of every token before
that position in every layer. A step then runs only the tokens from the subject's
last token onward, only through the layers above the edit, and applies the final
norm and the unembedding only at the positions the loss reads. `ValueProblem.losses
(..., naive=True)` computes the same losses with full forward passes and hooks; the
tests check that both agree.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from editharm import nethook
from editharm.models import head_logits
from editharm.methods.prompts import fill, length_buckets, pad_rows, target_ids, tokenize_at_subject
from editharm.requests import EditRequest

SITES = ("mlp", "residual", "attn")
KL_PROMPT = "{} is a"


# ------------------------------------------------------------------ settings

@dataclass(frozen=True)
class ValueSettings:
    """Optimiser settings (the v_* hyperparameters of ROME/MEMIT/PMET/AlphaEdit)."""

    num_steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    stop_loss: float = 5e-2
    nll_factor: float = 1.0
    # PMET: once every target token is already the argmax, shrink the NLL weight tenfold
    # and stop when the (weighted) KL term is at most 0.01.
    relax_when_argmax: bool = False


@dataclass(kw_only=True)
class ValueHparams:
    """The hyperparameters (YAML keys) of the value optimisation, shared by ROME, MEMIT, PMET and AlphaEdit.

    Each of those methods' Hparams subclasses this and adds its own fields. Keyword-only,
    so that a subclass may add fields without a default after these defaulted ones.
    """

    v_num_grad_steps: int
    v_lr: float
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    # [length in tokens, number of templates] per group, as ROME's context_template_length_params;
    # this default is MEMIT's: "{}" plus 5 model-generated prefixes of 10 tokens.
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    fact_token: str = "subject_last"

    def value_settings(self) -> ValueSettings:
        """The optimiser settings these hyperparameters give."""
        return ValueSettings(num_steps=self.v_num_grad_steps, lr=self.v_lr, weight_decay=self.v_weight_decay,
                             clamp_norm_factor=self.clamp_norm_factor, kl_factor=self.kl_factor)


# ------------------------------------------------------------------ the optimisation problem

@dataclass
class LossTerms:
    """Per-request loss terms at one delta: tensors of shape [R] (only requested rows)."""

    nll: torch.Tensor
    kl: torch.Tensor
    argmax_hit: torch.Tensor


@dataclass
class ValueResult:
    """values[site][r] = references[site][r] + deltas[site][r]: the target vectors (v*, z)."""

    values: dict[str, torch.Tensor]
    references: dict[str, torch.Tensor]
    deltas: dict[str, torch.Tensor]
    steps: list[int]
    loss: list[float]
    nll: list[float]
    kl: list[float]
    target_prob: list[float]
    history: list[list[float]] = field(default_factory=list)       # total loss per evaluation
    nll_history: list[list[float]] = field(default_factory=list)
    kl_history: list[list[float]] = field(default_factory=list)


class _PrefixKV:
    """Stands in for a transformers Cache: prepends fixed prefix keys/values, stores nothing.

    The attention modules call `update(key, value, layer_idx)` and attend over what it
    returns, so the suffix tokens see the cached prefix exactly as in a full pass.
    """

    def __init__(self, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor]):
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return (torch.cat([self.keys[layer_idx], key_states], dim=-2),
                torch.cat([self.values[layer_idx], value_states], dim=-2))


@dataclass
class _Row:
    request: int
    ids: list[int]
    edit: int                 # index of the subject's last token
    targets: list[int]        # positions whose next-token distribution is scored
    target_ids: list[int]     # the token expected there; empty for the KL row
    kl: bool


class ValueProblem:
    """One batch of requests, prepared for optimising deltas at layer `layer`.

    `sites` says where a delta is added at the subject's last token: "mlp" (the MLP
    output, ROME's v), "residual" (the layer's output, MEMIT's z) or "attn" (the
    attention output, PMET). Adding to the MLP output and to the layer output is the
    same computation; they differ in the reference vector that the clamp and the
    weight decay are relative to. Not so in Gemma, whose MLP output passes a norm
    before the residual: there the "mlp" delta is added inside the rerun edited layer.
    The constructor runs one unedited forward pass.
    """

    def __init__(self, model, tokenizer, layout, requests: Sequence[EditRequest], layer: int,
                 templates: Sequence[str], sites: Sequence[str] = ("mlp",), kl_prompt: str = KL_PROMPT):
        unknown = [s for s in sites if s not in SITES]
        if unknown or not sites:
            raise ValueError(f"unknown value site(s) {unknown}; known: {', '.join(SITES)}")
        if not 0 <= layer < layout.n_layers:
            raise ValueError(f"layer {layer} out of range for a model with {layout.n_layers} layers")
        if not templates or templates[0] != "{}":
            raise ValueError("the first context template must be '{}' (the plain prompt gives the reference value)")
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        self.requests, self.layer, self.sites = list(requests), layer, tuple(sites)
        self.n_templates = len(templates)
        self.device = next(model.parameters()).device
        self.rows = self._build_rows(templates, kl_prompt)
        self.fast = getattr(model.config, "_attn_implementation", "eager") in ("sdpa", "eager")
        self._prepare()
        self._selected: tuple[tuple[int, ...], dict] | None = None
        self._entry_cache: dict = {}

    # -------------------------------------------------------------- rows

    def _build_rows(self, templates: Sequence[str], kl_prompt: str) -> list[_Row]:
        rows = []
        for r, req in enumerate(self.requests):
            plain, a, b = fill("{}", req.prompt, req.subject)
            answer = target_ids(self.tokenizer, plain, req.target_new)
            for t in templates:
                text, a, b = fill(t, req.prompt, req.subject)
                ids, edit = tokenize_at_subject(self.tokenizer, text, a, b)
                n = len(ids)
                rows.append(_Row(r, ids + answer[:-1], edit, list(range(n - 1, n - 1 + len(answer))), answer, False))
            text, a, b = fill(kl_prompt, "{}", req.subject)
            ids, edit = tokenize_at_subject(self.tokenizer, text, a, b)
            rows.append(_Row(r, ids[:edit + 1], edit, [edit], [], True))
        return rows

    # -------------------------------------------------------------- the unedited pass

    def _site_module(self, site: str) -> str:
        f = self.layout
        return {"mlp": f.mlp_down, "attn": f.attn_out, "residual": f.layer}[site].format(self.layer)

    @torch.no_grad()
    def _prepare(self) -> None:
        f, rows, layer = self.layout, self.rows, self.layer
        B, dev = len(rows), self.device
        edit = torch.tensor([r.edit for r in rows], device=dev)
        lengths = torch.tensor([len(r.ids) for r in rows], device=dev)
        # Sites whose delta must enter inside the edited layer, by a hook, rather than be added to
        # its output: the attention output (the MLP reads it), and the MLP output where a norm sits
        # between it and the residual (Gemma's post-feed-forward norm), so adding it outside is not the same.
        self.hooked = [s for s in self.sites if s == "attn" or (s == "mlp" and f.post_mlp_norm)]
        self.start = layer if self.hooked else layer + 1
        layer_name, key_name = f.layer.format(layer), f.mlp_down.format(layer)
        names = sorted({self._site_module(s) for s in self.sites} | {layer_name, key_name})
        site_out = {s: torch.empty(B, f.hidden_size, device=dev) for s in self.sites}
        keys = torch.empty(B, f.intermediate_size, device=dev)
        final = torch.empty(B, f.hidden_size, device=dev)
        S = int((lengths - edit).max())
        P = int(edit.max())
        if self.fast:
            self.hidden = None
            kv = {}
        # Rows of similar length share a forward pass, so little time goes into padding.
        for bucket in length_buckets([len(r.ids) for r in rows]):
            idx = torch.tensor(bucket, device=dev)
            ids = pad_rows([rows[i].ids for i in bucket], 0).to(dev)
            e = edit[idx]
            ar = torch.arange(len(bucket), device=dev)
            with nethook.capture(self.model, names, inputs=True, outputs=True) as rec:
                if self.fast and f.family == "gemma3":
                    # A cache built from the config keeps only the last window of keys in sliding
                    # layers; one without it keeps every prefix key, and the masks do the windowing.
                    from transformers import DynamicCache

                    out = self.model.base_model(input_ids=ids, use_cache=True, past_key_values=DynamicCache())
                else:
                    out = self.model.base_model(input_ids=ids, use_cache=self.fast)
            for s_ in self.sites:
                site_out[s_][idx] = rec[self._site_module(s_)].output[ar, e].float()
            keys[idx] = rec[key_name].input[ar, e].float()
            final[idx] = out.last_hidden_state[ar, e].float()  # final norm already applied
            if not self.fast:
                continue
            # Hidden states entering the first rerun layer, from the subject's last token on; pads repeat the last token.
            entering = rec[layer_name].input if self.start == layer else rec[layer_name].output
            j = torch.arange(S, device=dev)
            src = torch.minimum(e[:, None] + j[None, :], lengths[idx][:, None] - 1)
            h = entering[ar[:, None], src]
            if self.hidden is None:
                self.hidden = h.new_zeros(B, S, h.shape[-1])
            self.hidden[idx] = h
            cache = out.past_key_values
            width = min(P, ids.shape[1])
            for l in range(self.start, f.n_layers):
                k, v = cache.layers[l].keys, cache.layers[l].values
                if l not in kv:
                    kv[l] = (k.new_zeros(B, k.shape[1], P, k.shape[3]), v.new_zeros(B, v.shape[1], P, v.shape[3]))
                kv[l][0][idx, :, :width] = k[:, :, :width]
                kv[l][1][idx, :, :width] = v[:, :, :width]
            del out, cache
        # The first row of each request is its plain prompt (template "{}"): it gives the reference values.
        plain = torch.tensor([i for i, r in enumerate(rows) if i == 0 or rows[i - 1].request != r.request], device=dev)
        self.references = {s: site_out[s][plain] for s in self.sites}
        # ROME's right vector is solved at the plain prompt's own key (compute_v's cur_input).
        self.plain_keys = keys[plain]
        nll_rows = [i for i, r in enumerate(rows) if not r.kl]
        req_of = torch.tensor([rows[i].request for i in nll_rows], device=dev)
        self.keys = torch.zeros(len(self.requests), f.intermediate_size, device=dev).index_add(
            0, req_of, keys[nll_rows]) / self.n_templates
        kl_rows = torch.tensor([i for i, r in enumerate(rows) if r.kl], device=dev)
        self.kl_init = torch.log_softmax(self._unembed(final[kl_rows], normed=True), dim=-1)
        if not self.fast:
            return
        self.positions = edit[:, None] + torch.arange(S, device=dev)[None, :]
        self.prefix_len = P
        self.prefix_k = {l: kv[l][0] for l in kv}
        self.prefix_v = {l: kv[l][1] for l in kv}
        dtype = self.hidden.dtype
        # Additive mask [B, 1, S, P + S]: a suffix token sees the row's prefix (< edit) and earlier suffix tokens.
        see_prefix = (torch.arange(P, device=dev)[None, :] < edit[:, None])[:, None, :].expand(B, S, P)
        causal = torch.ones(S, S, dtype=torch.bool, device=dev).tril()[None].expand(B, S, S)
        allowed = torch.cat([see_prefix, causal], dim=-1)
        self.mask = torch.zeros(B, 1, S, P + S, dtype=dtype, device=dev).masked_fill(
            ~allowed[:, None], torch.finfo(dtype).min)
        self.mask_local = None
        window = getattr(self.model.config, "sliding_window", None) if f.family == "gemma3" else None
        if window:
            # Sliding-window layers also hide keys `window` or more positions back (transformers'
            # sliding_window_overlay: key position > query position - window).
            key_pos = torch.cat([torch.arange(P, device=dev)[None, :].expand(B, P), self.positions], dim=-1)
            near = key_pos[:, None, :] > self.positions[:, :, None] - window
            self.mask_local = torch.zeros(B, 1, S, P + S, dtype=dtype, device=dev).masked_fill(
                ~(allowed & near)[:, None], torch.finfo(dtype).min)
        rotary = getattr(self.model.base_model, "rotary_emb", None)
        if f.family == "gemma3":
            # One rotary table per attention type (local layers use a smaller base frequency).
            self.rope = {t: rotary(self.hidden, self.positions, t) for t in set(self.model.config.layer_types)}
        else:
            self.rope = rotary(self.hidden, self.positions) if rotary is not None else None

    def _unembed(self, h: torch.Tensor, normed: bool = False) -> torch.Tensor:
        if not normed:
            h = self.model.get_submodule(self.layout.final_norm)(h)
        return head_logits(self.model, h)

    # -------------------------------------------------------------- losses

    def _entries(self, row_ids: Sequence[int]):
        """Flat (row, position, token) tensors for the given rows, in row order (token -1: KL)."""
        key = tuple(row_ids)
        if key not in self._entry_cache:
            self._entry_cache = {key: self._build_entries(row_ids)}
        return self._entry_cache[key]

    def _build_entries(self, row_ids: Sequence[int]):
        e_row, e_pos, e_tok = [], [], []
        for k, i in enumerate(row_ids):
            r = self.rows[i]
            if r.kl:
                e_row.append(k), e_pos.append(r.edit), e_tok.append(-1)
            else:
                for p, t in zip(r.targets, r.target_ids):
                    e_row.append(k), e_pos.append(p), e_tok.append(t)
        dev = self.device
        return torch.tensor(e_row, device=dev), torch.tensor(e_pos, device=dev), torch.tensor(e_tok, device=dev)

    def _terms(self, logits: torch.Tensor, row_ids: Sequence[int], req_ids: Sequence[int]) -> LossTerms:
        e_row, _, e_tok = self._entries(row_ids)
        logp = torch.log_softmax(logits, dim=-1)
        req_index = {r: k for k, r in enumerate(req_ids)}
        rows = [self.rows[i] for i in row_ids]
        row_req = torch.tensor([req_index[r.request] for r in rows], device=self.device)
        R = len(req_ids)
        is_nll = e_tok >= 0
        tok_lp = logp[is_nll].gather(1, e_tok[is_nll][:, None]).squeeze(1)
        n_target = torch.tensor([len(self.rows[i].target_ids) or 1 for i in row_ids], device=self.device, dtype=logp.dtype)
        per_row = torch.zeros(len(rows), dtype=logp.dtype, device=self.device).index_add(0, e_row[is_nll], -tok_lp)
        per_row = per_row / n_target
        nll_rows = torch.tensor([not r.kl for r in rows], device=self.device)
        nll = torch.zeros(R, dtype=logp.dtype, device=self.device).index_add(0, row_req[nll_rows], per_row[nll_rows]) / self.n_templates
        kl_lp = logp[~is_nll]
        kl_req = row_req[e_row[~is_nll]]
        init = self.kl_init[torch.tensor([req_ids[k] for k in kl_req.tolist()], device=self.device)]
        kl = torch.zeros(R, dtype=logp.dtype, device=self.device).index_add(
            0, kl_req, (kl_lp.exp() * (kl_lp - init)).sum(-1))
        hit_tok = (logp[is_nll].argmax(-1) == e_tok[is_nll]).float()
        misses = torch.zeros(R, device=self.device).index_add(0, row_req[e_row[is_nll]], 1 - hit_tok)
        return LossTerms(nll=nll, kl=kl, argmax_hit=misses == 0)

    def losses(self, deltas: dict[str, torch.Tensor], req_ids: Sequence[int] | None = None, naive: bool = False) -> LossTerms:
        """Loss terms of the requests `req_ids` (default all) with deltas[site][k] for the k-th of them."""
        req_ids = list(range(len(self.requests))) if req_ids is None else list(req_ids)
        missing = [s for s in self.sites if s not in deltas]
        if missing:
            raise ValueError(f"deltas missing for site(s) {missing}")
        row_ids = [i for i, r in enumerate(self.rows) if r.request in set(req_ids)]
        if naive or not self.fast:
            logits = self._logits_naive(deltas, row_ids, req_ids)
        else:
            logits = self._logits_fast(deltas, row_ids, req_ids)
        return self._terms(logits, row_ids, req_ids)

    def _row_deltas(self, deltas, row_ids, req_ids) -> dict[str, torch.Tensor]:
        index = {r: k for k, r in enumerate(req_ids)}
        sel = torch.tensor([index[self.rows[i].request] for i in row_ids], device=self.device)
        return {s: deltas[s][sel] for s in self.sites}

    def _logits_naive(self, deltas, row_ids, req_ids) -> torch.Tensor:
        rows = [self.rows[i] for i in row_ids]
        ids = pad_rows([r.ids for r in rows], 0).to(self.device)
        edit = [r.edit for r in rows]
        row_d = self._row_deltas(deltas, row_ids, req_ids)
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            for s in self.sites:
                stack.enter_context(nethook.add_to_output(self.model, self._site_module(s), row_d[s], range(len(rows)), edit))
            hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            e_row, e_pos, _ = self._entries(row_ids)
            return self._unembed(hidden[e_row, e_pos], normed=True)

    def _select(self, row_ids: Sequence[int]) -> list[tuple[torch.Tensor, dict]]:
        """The cached tensors of the given rows, in buckets of similar suffix length.

        Rows of different requests have suffixes of different lengths; running them in
        buckets trimmed to their own longest suffix and prefix avoids computing padding.
        Returns (local row indices, tensors) per bucket; kept until the rows change.
        """
        key = tuple(row_ids)
        if self._selected is not None and self._selected[0] == key:
            return self._selected[1]
        lengths = [len(self.rows[i].ids) - self.rows[i].edit for i in row_ids]
        P = self.prefix_len
        buckets = []
        for local in length_buckets(lengths):
            local = sorted(local)
            idx = torch.tensor([row_ids[i] for i in local], device=self.device)
            s_b = max(lengths[i] for i in local)
            p_b = max(self.rows[row_ids[i]].edit for i in local)
            pick = lambda t: t.index_select(0, idx)  # noqa: E731
            mask = pick(self.mask)[:, :, :s_b]
            windowed = None if self.mask_local is None else pick(self.mask_local)[:, :, :s_b]
            sel = dict(
                hidden=pick(self.hidden)[:, :s_b], positions=pick(self.positions)[:, :s_b],
                mask=torch.cat([mask[..., :p_b], mask[..., P:P + s_b]], dim=-1),
                k={l: pick(v)[:, :, :p_b] for l, v in self.prefix_k.items()},
                v={l: pick(v)[:, :, :p_b] for l, v in self.prefix_v.items()},
                rope=None if self.rope is None or isinstance(self.rope, dict) else tuple(pick(t)[:, :s_b] for t in self.rope),
            )
            if windowed is not None:
                sel["mask_local"] = torch.cat([windowed[..., :p_b], windowed[..., P:P + s_b]], dim=-1)
            if isinstance(self.rope, dict):
                sel["rope"] = {t: tuple(pick(x)[:, :s_b] for x in r) for t, r in self.rope.items()}
            buckets.append((torch.tensor(local, device=self.device), sel))
        self._selected = (key, buckets)
        return buckets

    def _logits_fast(self, deltas, row_ids, req_ids) -> torch.Tensor:
        row_d = self._row_deltas(deltas, row_ids, req_ids)
        buckets = self._select(row_ids)
        finals = [self._run_bucket(sel, {s: d[local] for s, d in row_d.items()}) for local, sel in buckets]
        return self._loss_logits(finals, [local for local, _ in buckets], row_ids)

    def _loss_logits(self, finals: Sequence[torch.Tensor], locals_: Sequence[torch.Tensor],
                     row_ids: Sequence[int]) -> torch.Tensor:
        """Logits at the loss entries (in `_entries` order), gathered from each bucket's final hidden states.

        `finals[b]` holds the suffix states of the rows `locals_[b]` (indices into row_ids).
        """
        e_row, e_pos, _ = self._entries(row_ids)
        edits = torch.tensor([self.rows[i].edit for i in row_ids], device=self.device)
        e_suffix = e_pos - edits[e_row]
        # Where each row sits in its bucket, so entries can be gathered bucket by bucket.
        bucket_of = torch.empty(len(row_ids), dtype=torch.long, device=self.device)
        slot_of = torch.empty(len(row_ids), dtype=torch.long, device=self.device)
        for b, local in enumerate(locals_):
            bucket_of[local] = b
            slot_of[local] = torch.arange(len(local), device=self.device)
        logits = None
        for b, h in enumerate(finals):
            chosen = (bucket_of[e_row] == b).nonzero(as_tuple=True)[0]
            part = self._unembed(h[slot_of[e_row[chosen]], e_suffix[chosen]])
            if logits is None:
                logits = part.new_empty(len(e_row), part.shape[-1])
            logits = logits.index_copy(0, chosen, part)
        return logits

    def _run_bucket(self, sel: dict, row_d: dict[str, torch.Tensor]) -> torch.Tensor:
        out_delta = sum(row_d[s] for s in self.sites if s not in self.hooked)
        h = sel["hidden"]
        if self.start == self.layer + 1:
            h = torch.cat([h[:, :1] + out_delta[:, None], h[:, 1:]], dim=1)
        cache = _PrefixKV(sel["k"], sel["v"])
        n = h.shape[0]
        for l in range(self.start, self.layout.n_layers):
            if l == self.layer and self.hooked:
                with contextlib.ExitStack() as stack:
                    for s in self.hooked:
                        stack.enter_context(nethook.add_to_output(self.model, self._site_module(s), row_d[s], range(n), [0] * n))
                    h = self._call_layer(l, h, sel, cache)
                if not isinstance(out_delta, int):
                    h = torch.cat([h[:, :1] + out_delta[:, None], h[:, 1:]], dim=1)
            else:
                h = self._call_layer(l, h, sel, cache)
        return h

    def _call_layer(self, l: int, h: torch.Tensor, sel: dict, cache: _PrefixKV) -> torch.Tensor:
        module = self.model.get_submodule(self.layout.layer.format(l))
        family = self.layout.family
        if family == "llama":
            out = module(h, attention_mask=sel["mask"], position_ids=sel["positions"], past_key_values=cache,
                         use_cache=False, position_embeddings=sel["rope"])
        elif family == "gpt_neox":
            out = module(h, attention_mask=sel["mask"], position_ids=sel["positions"], layer_past=cache,
                         use_cache=False, position_embeddings=sel["rope"])
        elif family == "gpt2":
            out = module(h, past_key_values=cache, attention_mask=sel["mask"], use_cache=False)
        elif family == "gemma3":
            kind = self.model.config.layer_types[l]
            mask = sel["mask_local"] if kind == "sliding_attention" and "mask_local" in sel else sel["mask"]
            out = module(h, attention_mask=mask, position_ids=sel["positions"], past_key_values=cache,
                         use_cache=False, position_embeddings=sel["rope"][kind])
        else:
            raise ValueError(f"no fast value path for model family {family!r}")
        return out[0] if isinstance(out, tuple) else out


# ------------------------------------------------------------------ the optimiser

def optimize_values(problem: ValueProblem, settings: ValueSettings) -> ValueResult:
    """Optimise one delta per request and site; see the module docstring for the objective.

    Adam (torch's default betas/eps) is written out per request so that a request that
    has stopped keeps its delta while the others go on, exactly as if each request
    had been optimised alone.
    """
    sites, R = problem.sites, len(problem.requests)
    refs = problem.references
    ref_norm = {s: refs[s].norm(dim=-1) for s in sites}
    deltas = {s: torch.zeros_like(refs[s]) for s in sites}
    m = {s: torch.zeros_like(refs[s]) for s in sites}
    v = {s: torch.zeros_like(refs[s]) for s in sites}
    b1, b2, eps = 0.9, 0.999, 1e-8
    active = list(range(R))
    steps = [0] * R
    final = {"loss": [math.nan] * R, "nll": [math.nan] * R, "kl": [math.nan] * R}
    nll_factor = torch.full((R,), settings.nll_factor)
    history: list[list[float]] = [[] for _ in range(R)]
    nll_history: list[list[float]] = [[] for _ in range(R)]
    kl_history: list[list[float]] = [[] for _ in range(R)]
    t = 0
    for it in range(settings.num_steps):
        leaves = {s: deltas[s][active].clone().requires_grad_(True) for s in sites}
        with torch.enable_grad():
            terms = problem.losses(leaves, active)
            idx = torch.tensor(active)
            wd = sum(leaves[s].norm(dim=-1) / ref_norm[s][idx] ** 2 for s in sites)
            nll_w = nll_factor[idx].to(terms.nll.dtype) * terms.nll
            kl_w = settings.kl_factor * terms.kl
            loss = nll_w + kl_w + settings.weight_decay * wd
        loss_d, nll_d, kl_d, kl_w_d = loss.detach(), terms.nll.detach(), terms.kl.detach(), kl_w.detach()
        keep = []
        for k, r in enumerate(active):
            final["loss"][r], final["nll"][r], final["kl"][r] = float(loss_d[k]), float(nll_d[k]), float(kl_d[k])
            history[r].append(float(loss_d[k]))
            nll_history[r].append(float(nll_d[k]))
            kl_history[r].append(float(kl_d[k]))
            done = float(loss_d[k]) < settings.stop_loss
            if settings.relax_when_argmax:
                if bool(terms.argmax_hit[k]):
                    nll_factor[r] = 0.1 * settings.nll_factor
                    done = done or float(kl_w_d[k]) <= 0.01
                else:
                    nll_factor[r] = settings.nll_factor
            if not done:
                keep.append(k)
        if it == settings.num_steps - 1 or not keep:
            break
        grads = torch.autograd.grad(loss[keep].sum(), [leaves[s] for s in sites])
        t += 1
        rows = torch.tensor([active[k] for k in keep])
        kk = torch.tensor(keep)
        for s, g in zip(sites, grads):
            g = g[kk]
            m[s][rows] = b1 * m[s][rows] + (1 - b1) * g
            v[s][rows] = b2 * v[s][rows] + (1 - b2) * g * g
            denom = (v[s][rows].sqrt() / math.sqrt(1 - b2 ** t)) + eps
            new = deltas[s][rows] - (settings.lr / (1 - b1 ** t)) * m[s][rows] / denom
            # Project back into the ball of radius clamp_norm_factor * ||reference||.
            max_norm = settings.clamp_norm_factor * ref_norm[s][rows]
            norm = new.norm(dim=-1)
            scale = torch.where(norm > max_norm, max_norm / norm.clamp_min(1e-30), torch.ones_like(norm))
            deltas[s][rows] = new * scale[:, None]
        for r in rows.tolist():
            steps[r] += 1
        active = rows.tolist()
    values = {s: refs[s] + deltas[s] for s in sites}
    return ValueResult(values=values, references={s: refs[s].clone() for s in sites}, deltas=deltas, steps=steps,
                       loss=final["loss"], nll=final["nll"], kl=final["kl"],
                       target_prob=[math.exp(-x) for x in final["nll"]], history=history,
                       nll_history=nll_history, kl_history=kl_history)
