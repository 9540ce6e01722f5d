"""SERAC: semi-parametric editing with a retrieval-augmented counterfactual model
(Mitchell et al., ICML 2022, "Memory-Based Model Editing at Scale").

SERAC never changes the base model's weights. An edit is written to an explicit memory;
at inference a scope classifier decides, for each input, whether it falls in the scope
of some memory entry (highest score above a threshold). In-scope inputs are answered by
a counterfactual model that sees the retrieved edit; all others by the unmodified base
model, so their outputs are exactly the base model's.

Components here, and how they relate to the paper:

* Memory: the edit requests themselves (prompt, new target), plus each prompt's
  classifier feature, kept as the method state (`apply` returns StateUpdate).
* Scope classifier: the paper's embedding variant (distilbert-base-cased, score
  exp(-||e(edit) - e(x)||^2), trained with binary cross-entropy on in-scope and
  out-of-scope pairs, threshold 0.5). Here e() is a trained linear projection of the
  base model's own mean-pooled hidden state at relative depth `cls_depth` (standardised per
  dimension), instead of a separate encoder: no second model to fetch, and the
  features of a query come for free from the base model's forward pass that
  out-of-scope inputs need anyway. The loss, score and threshold are the paper's.
* Counterfactual model: the base model itself, conditioned on the retrieved edit text
  (`template`) placed before the query. This is the reference code's `freeze_cntr`
  variant (the base model as counterfactual model, edit in context) rather than a
  separately fine-tuned small LM: nothing to fine-tune or store, and on SmolLM2-135M
  the edit in context lowers the target NLL of zsRE edits from about 7.0 to 0.7 on the
  edit prompt and on its rephrasing.

`train` (its own DAG rule) fits the classifier: for each training request the memory
key is its prompt; positives are its rephrasings (bare and followed by either target)
and its prompt followed by the old target; negatives are its locality prompts and every
other request's queries in the same batch (in-batch negatives).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from editharm import nethook
from editharm.methods.base import EditContext, StateUpdate
from editharm.methods.prompts import right_pad
from editharm.requests import EditRequest

NAME = "serac"
SUPPORTS_BATCH = True
EDITS_WEIGHTS = False
TRAINED = True

WEIGHTS_FILE = "serac_classifier.safetensors"
META_FILE = "serac.json"
LOG_FILE = "training_log.jsonl"


@dataclass
class Hparams:
    """SERAC hyperparameters.

    cls_depth  where the classifier feature is read: the output of layer
               round(cls_depth * (n_layers - 1)), mean-pooled over the tokens (0: first
               layer, 1: last); a fraction, so one value fits every size of a family.
               cls_dim is the size of the learned embedding
    threshold  in-scope when the best memory score exp(-d^2) exceeds it (paper: 0.5)
    template   how the counterfactual model sees a retrieved edit before the query
    lr, batch_size, max_iters, grad_clip  classifier training (batch_size = edits per
               batch; every other edit's queries are its negatives)
    """

    cls_depth: float = 0.5
    cls_dim: int = 256
    threshold: float = 0.5
    template: str = "New fact: {prompt} {target}.\n"
    lr: float = 1e-5
    batch_size: int = 10
    max_iters: int = 100000
    grad_clip: float = 100.0
    max_length: int = 128
    feature_batch_size: int = 32
    log_interval: int = 10


# ---------------------------------------------------------------- pure math

def log_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """log score(q, k) = -||q - k||^2 for every pair: [n_queries, n_keys] (the paper's squared distance)."""
    return -torch.cdist(queries, keys).pow(2)


def scope_loss(log_s: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of score = exp(log_s), positives and negatives weighted equally.

    -log(score) for in-scope pairs, -log(1 - score) for out-of-scope pairs.
    """
    pos = -log_s[positive]
    # log(1 - exp(x)) for x < 0, computed stably as log(-expm1(x))
    neg = -torch.log(-torch.expm1(log_s[~positive].clamp(max=-1e-6)))
    parts = [p.mean() for p in (pos, neg) if p.numel()]
    return sum(parts) / len(parts)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where mask is true: [B, L, D], [B, L] -> [B, D] (float32)."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)


class ScopeClassifier(nn.Module):
    """e(x) = P standardise(feature(x)); score(edit, x) = exp(-||e(edit) - e(x)||^2)."""

    def __init__(self, feature_dim: int, dim: int):
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))
        self.proj = nn.Linear(feature_dim, dim, bias=False)
        # Initial squared distances of order 1, so scores start away from 0 and 1.
        nn.init.normal_(self.proj.weight, std=(1.0 / (feature_dim * dim)) ** 0.5)

    def set_standardisation(self, features: torch.Tensor) -> None:
        self.feat_mean.copy_(features.mean(0))
        self.feat_std.copy_(features.std(0).clamp(min=1e-6))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj((features.float() - self.feat_mean) / self.feat_std)


# ---------------------------------------------------------------- features

def resolve_layer(n_layers: int, cls_depth: float) -> int:
    """The layer at relative depth cls_depth (0 = first, 1 = last), rounding halves up."""
    if not 0.0 <= cls_depth <= 1.0:
        raise ValueError(f"serac: cls_depth {cls_depth} must lie in [0, 1] (a fraction of the model's depth)")
    return int(cls_depth * (n_layers - 1) + 0.5)


def pool_mask(input_ids: torch.Tensor, real: torch.Tensor, tokenizer) -> torch.Tensor:
    """The tokens a query's feature averages: its real tokens except a leading BOS.

    A BOS carries the same (often very large) activations in every sequence, so it
    would only add a length-dependent constant. When nothing else is left, the real
    tokens are used as they are.
    """
    keep = real.clone()
    bos = tokenizer.bos_token_id
    if bos is not None:
        keep &= input_ids != bos
    empty = keep.sum(-1) == 0
    keep[empty] = real[empty]
    return keep


def text_features(model, tokenizer, texts: list[str], layer: int, max_length: int, batch_size: int) -> torch.Tensor:
    """Mean-pooled hidden state at `layer` of each text ([N, hidden], float32), stopping the forward there."""
    from editharm.models import layout_for

    name = layout_for(model).layer.format(layer)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    bar = tqdm(total=len(texts), desc="classifier features", unit="text", mininterval=10.0, disable=len(texts) < 256)
    # The forward stops after the classifier layer: the layers above it would be wasted work.
    try:
        with nethook.capture(model, [name], stop_after=name) as rec:
            for i in range(0, len(texts), batch_size):
                rows = [tokenizer(t)["input_ids"][-max_length:] for t in texts[i:i + batch_size]]
                ids, real = right_pad(rows, pad)
                ids, real = ids.to(device), real.to(device)
                with torch.no_grad():
                    nethook.run_until_stopped(lambda: model(input_ids=ids, attention_mask=real.long()))
                out.append(masked_mean(rec[name].output, pool_mask(ids, real, tokenizer)).cpu())
                bar.update(len(rows))
    finally:
        bar.close()
    return torch.cat(out) if out else torch.zeros((0, model.config.hidden_size))


# ---------------------------------------------------------------- training

def _training_texts(request: EditRequest) -> tuple[list[str], list[str]]:
    """(in-scope queries, out-of-scope queries) for one training request; its key is its prompt."""
    pos = []
    for para in request.paraphrases[:1]:
        pos += [para, f"{para} {request.target_new}"]
    if request.target_true:
        pos.append(f"{request.filled_prompt} {request.target_true}")
    if not pos:
        pos.append(f"{request.filled_prompt} {request.target_new}")
    neg = [f"{p.prompt} {p.target}" for p in request.locality[:1]]
    return pos, neg


def train(model, tokenizer, requests: list[EditRequest], hparams: Hparams, out_dir, seed: int) -> dict[str, Any]:
    """Fit the scope classifier; writes serac_classifier.safetensors, serac.json, training_log.jsonl."""
    from editharm.io import write_jsonl
    from editharm.models import layout_for

    if len(requests) < 2:
        raise ValueError("SERAC training needs at least two requests (other edits are the in-batch negatives)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    layer = resolve_layer(layout_for(model).n_layers, hparams.cls_depth)
    start, cpu_start = time.perf_counter(), time.process_time()

    # Every text's feature is computed once: the base model is frozen, only the projection trains.
    texts: list[str] = []
    keys, pos_idx, neg_idx = [], [], []
    for r in requests:
        pos, neg = _training_texts(r)
        keys.append(len(texts))
        texts.append(r.filled_prompt)
        pos_idx.append(list(range(len(texts), len(texts) + len(pos))))
        texts += pos
        neg_idx.append(list(range(len(texts), len(texts) + len(neg))))
        texts += neg
    feats = text_features(model, tokenizer, texts, layer, hparams.max_length, hparams.feature_batch_size)
    feature_seconds = time.perf_counter() - start

    clf = ScopeClassifier(feats.shape[1], hparams.cls_dim)
    clf.set_standardisation(feats)
    opt = torch.optim.Adam(clf.parameters(), lr=hparams.lr)
    log: list[dict[str, Any]] = []
    order: list[int] = []
    bsz = max(2, min(hparams.batch_size, len(requests)))
    for it in range(hparams.max_iters):
        if len(order) < bsz:
            order += rng.sample(range(len(requests)), len(requests))
        batch = [order.pop() for _ in range(bsz)]
        q_rows, owner = [], []
        for b, i in enumerate(batch):
            for j in pos_idx[i]:
                q_rows.append(j)
                owner.append(b)
            for j in neg_idx[i]:
                q_rows.append(j)
                owner.append(-1)  # a locality prompt is in scope of no edit
        k_emb = clf.embed(feats[[keys[i] for i in batch]])
        q_emb = clf.embed(feats[q_rows])
        log_s = log_scores(q_emb, k_emb)
        positive = torch.tensor(owner)[:, None] == torch.arange(len(batch))[None, :]
        loss = scope_loss(log_s, positive)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clf.parameters(), hparams.grad_clip)
        opt.step()
        if it % hparams.log_interval == 0 or it + 1 == hparams.max_iters:
            with torch.no_grad():
                scores = log_s.exp()
                hit = scores > hparams.threshold
            log.append({"iter": it, "loss": loss.item(), "seconds": time.perf_counter() - start,
                        "pos_recall": hit[positive].float().mean().item(),
                        "neg_false_positive": hit[~positive].float().mean().item()})
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    save_classifier(clf, hparams, layer, out_dir)
    write_jsonl(out_dir / LOG_FILE, log)
    window = max(1, len(log) // 10)
    return {
        "method": NAME, "iters": hparams.max_iters, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "feature_seconds": feature_seconds,
        "n_requests": len(requests), "n_texts": len(texts), "cls_layer": layer,
        "loss_first": _mean(log[:window], "loss"), "loss_last": _mean(log[-window:], "loss"),
        "pos_recall_last": _mean(log[-window:], "pos_recall"),
        "neg_false_positive_last": _mean(log[-window:], "neg_false_positive"),
    }


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def save_classifier(clf: ScopeClassifier, hp: Hparams, layer: int, out_dir: Path) -> None:
    from safetensors.torch import save_file

    from editharm.io import atomic_path, write_json

    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in clf.state_dict().items()}, str(tmp))
    write_json(out_dir / META_FILE, {"cls_layer": layer, "feature_dim": clf.feat_mean.shape[0],
                                     "cls_dim": clf.proj.weight.shape[0], "hparams": asdict(hp)})


_CACHE: dict[tuple[str, float], tuple[ScopeClassifier, int]] = {}


def load_classifier(trained_dir: str | Path) -> tuple[ScopeClassifier, int]:
    """The trained classifier and its feature layer (cached per file and modification time)."""
    from safetensors.torch import load_file

    path = Path(trained_dir) / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: SERAC needs its trained scope classifier (the train rule's output)")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _CACHE:
        meta = json.loads((Path(trained_dir) / META_FILE).read_text())
        clf = ScopeClassifier(meta["feature_dim"], meta["cls_dim"])
        clf.load_state_dict(load_file(str(path)))
        clf.eval().requires_grad_(False)
        _CACHE.clear()
        _CACHE[key] = (clf, int(meta["cls_layer"]))
    return _CACHE[key]


def _trained_dir(context: EditContext) -> str:
    trained_dir = context.artifacts.get("trained_dir")
    if not trained_dir:
        raise ValueError("SERAC needs context.artifacts['trained_dir'] (the folder written by its train rule)")
    return trained_dir


# ---------------------------------------------------------------- editing: the memory

def empty_memory(feature_dim: int) -> dict[str, Any]:
    return {"case_ids": [], "prompts": [], "targets": [], "keys": torch.zeros((0, feature_dim))}


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> StateUpdate:
    """Append the requests to the edit memory (with their classifier features); the model is untouched."""
    clf, layer = load_classifier(_trained_dir(context))
    feats = text_features(model, tokenizer, [r.filled_prompt for r in requests], layer, hparams.max_length,
                          hparams.feature_batch_size)
    old = context.state if context.state else empty_memory(feats.shape[1])
    state = {
        "case_ids": list(old["case_ids"]) + [r.case_id for r in requests],
        "prompts": list(old["prompts"]) + [r.filled_prompt for r in requests],
        "targets": list(old["targets"]) + [r.target_new for r in requests],
        "keys": torch.cat([old["keys"].float().cpu(), feats]),
    }
    return StateUpdate(state=state, info={"memory_size": len(state["prompts"])})


def attach(model, tokenizer, state: dict[str, Any], hparams: Hparams, context: EditContext) -> nn.Module:
    """The base model behind SERAC's router: in-scope inputs go to the counterfactual model."""
    clf, layer = load_classifier(_trained_dir(context))
    return SeracModel(model, tokenizer, clf, layer, state or {}, hparams)


# ---------------------------------------------------------------- inference: routing

@dataclass
class _Insert:
    """Where a memory entry's tokens go into one routed row, and what that does to positions."""

    row: int        # row in the caller's batch
    at: int         # index in the caller's row where the edit tokens are inserted
    ctx: list[int]  # the edit tokens
    shift: int      # left padding added so every routed row has the same length


class SeracCache:
    """KV caches of a routed generation: the base model's for all rows, the counterfactual's for routed rows.

    Routing is decided once, on the prompt, as in the reference generate(); the caller
    only needs `batch_select_indices` (rows finishing) and `get_seq_length`.
    """

    def __init__(self, base_cache, cf_cache, inserts: list[_Insert]):
        self.base, self.cf, self.inserts = base_cache, cf_cache, inserts

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.base.get_seq_length(layer_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.base.batch_select_indices(indices)
        keep = [int(i) for i in indices]
        by_row = {ins.row: j for j, ins in enumerate(self.inserts)}
        local, new = [], []
        for new_row, old_row in enumerate(keep):
            if old_row in by_row:
                local.append(by_row[old_row])
                ins = self.inserts[by_row[old_row]]
                new.append(_Insert(new_row, ins.at, ins.ctx, ins.shift))
        if self.cf is not None and local:
            self.cf.batch_select_indices(torch.tensor(local, device=indices.device))
        self.inserts = new
        if not new:
            self.cf = None


class SeracModel(nn.Module):
    """Drop-in causal LM: forward(input_ids, attention_mask, position_ids, ...) -> output with .logits.

    Each row is scored by the classifier from the base model's own hidden states of the
    same forward pass. Rows in scope of a memory entry get the counterfactual model's
    logits (the base model with the edit text inserted before the row's first real
    token, or after a leading BOS), read at the positions of the row's own tokens; all
    other rows keep the base model's logits of that very pass, so they are bit-identical
    to calling the base model. Attention masks may be 2D (padding) or 4D (additive,
    e.g. several answer segments sharing a context); logits_to_keep may be an int or
    integer position tensor; a KV cache (use_cache) works with 2D masks.
    """

    def __init__(self, base, tokenizer, classifier: ScopeClassifier, layer: int, memory: dict[str, Any], hp: Hparams):
        super().__init__()
        from editharm.models import layout_for

        self.base = base
        self.tokenizer = tokenizer
        self.hp = hp
        self.layer_name = layout_for(base).layer.format(layer)
        device = next(base.parameters()).device
        self.classifier = classifier.to(device)
        self.prompts = list(memory.get("prompts", []))
        self.targets = list(memory.get("targets", []))
        keys = memory.get("keys")
        with torch.no_grad():
            self.key_emb = self.classifier.embed(keys.to(device)) if self.prompts else None
        self._ctx_cache: dict[int, list[int]] = {}
        self._bos_in_front = _tokenizer_adds_bos(tokenizer)

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return getattr(self.base, "generation_config", None)

    @property
    def device(self):
        return next(self.base.parameters()).device

    @property
    def dtype(self):
        return next(self.base.parameters()).dtype

    def route(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(best score, index of the best memory entry) per row."""
        with torch.no_grad():
            scores = log_scores(self.classifier.embed(features), self.key_emb).exp()
        return scores.max(-1)

    def _context_ids(self, entry: int) -> list[int]:
        if entry not in self._ctx_cache:
            text = self.hp.template.format(prompt=self.prompts[entry], target=self.targets[entry])
            self._ctx_cache[entry] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._ctx_cache[entry]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs):
        if isinstance(past_key_values, SeracCache):
            return self._decode_step(input_ids, attention_mask, position_ids, past_key_values, logits_to_keep, kwargs)
        if past_key_values is not None or not self.prompts:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        if attention_mask is not None and attention_mask.dim() == 4 and use_cache:
            raise ValueError("SeracModel: a KV cache is supported with 2D attention masks only")
        with nethook.capture(self.base, [self.layer_name], detach=False) as rec:
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        real, visible = _real_and_pooled(input_ids, attention_mask)
        feats = masked_mean(rec[self.layer_name].output, pool_mask(input_ids, visible, self.tokenizer))
        best, entry = self.route(feats)
        rows = [b for b in range(input_ids.shape[0]) if best[b] > self.hp.threshold and real[b].any()]
        inserts = [self._insert_for(b, int(entry[b]), input_ids[b], real[b]) for b in rows]
        cf_cache = None
        if inserts:
            cf_logits, cf_cache = self._counterfactual(input_ids, attention_mask, position_ids, logits_to_keep,
                                                       use_cache, inserts, kwargs)
            out.logits[rows] = cf_logits.to(out.logits.dtype)
        if use_cache:
            out.past_key_values = SeracCache(out.past_key_values, cf_cache, inserts)
        out.serac_routed = rows
        out.serac_scores = best
        return out

    def _insert_for(self, row: int, entry: int, ids: torch.Tensor, real: torch.Tensor) -> _Insert:
        first = int(real.nonzero()[0])
        at = first + 1 if self._bos_in_front and int(ids[first]) == self.tokenizer.bos_token_id else first
        return _Insert(row=row, at=at, ctx=self._context_ids(entry), shift=0)

    def _counterfactual(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache, inserts, kwargs):
        """Logits of the routed rows with their edits inserted, read at the rows' original positions."""
        width = max(len(ins.ctx) for ins in inserts)
        for ins in inserts:
            ins.shift = width - len(ins.ctx)
        L = input_ids.shape[1]
        rows = [ins.row for ins in inserts]
        orig_pos = position_ids[rows] if position_ids is not None else torch.arange(L, device=input_ids.device).expand(len(rows), L)
        new_ids, new_pos, index = [], [], []
        pad = next((t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None), 0)
        for k, ins in enumerate(inserts):
            ids, pos = input_ids[ins.row], orig_pos[k]
            C, at = len(ins.ctx), ins.at
            start = int(pos[at]) if at < L else int(pos[-1]) + 1
            ctx = torch.tensor(ins.ctx, device=ids.device, dtype=ids.dtype)
            new_ids.append(torch.cat([ids.new_full((ins.shift,), pad), ids[:at], ctx, ids[at:]]))
            new_pos.append(torch.cat([pos.new_zeros(ins.shift), pos[:at], start + torch.arange(C, device=pos.device), pos[at:] + C]))
            index.append(_new_index(L, ins))
        new_ids, new_pos, index = torch.stack(new_ids), torch.stack(new_pos), torch.stack(index)
        new_mask = _extend_mask(attention_mask, inserts, width, L, new_ids)
        keep = _original_keep(logits_to_keep, L, rows, input_ids.device)
        new_keep = torch.gather(index.to(keep.device), 1, keep)
        out = self.base(input_ids=new_ids, attention_mask=new_mask, position_ids=new_pos, use_cache=use_cache,
                        logits_to_keep=new_keep, **kwargs)
        return out.logits, (out.past_key_values if use_cache else None)

    def _decode_step(self, input_ids, attention_mask, position_ids, cache: SeracCache, logits_to_keep, kwargs):
        """One cached generation step: base rows from the base cache, routed rows from the counterfactual cache."""
        if position_ids is None:
            n = cache.base.get_seq_length()
            position_ids = (n + torch.arange(input_ids.shape[1], device=input_ids.device)).expand(input_ids.shape[0], -1)
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=cache.base, use_cache=True, logits_to_keep=logits_to_keep, **kwargs)
        if cache.inserts:
            rows = [ins.row for ins in cache.inserts]
            masks = []
            for ins in cache.inserts:
                m = attention_mask[ins.row]
                masks.append(torch.cat([m.new_zeros(ins.shift), m[:ins.at], m.new_ones(len(ins.ctx)), m[ins.at:]]))
            shifts = torch.tensor([len(ins.ctx) for ins in cache.inserts], device=input_ids.device)[:, None]
            cf = self.base(input_ids=input_ids[rows], attention_mask=torch.stack(masks),
                           position_ids=position_ids[rows] + shifts, past_key_values=cache.cf, use_cache=True,
                           logits_to_keep=logits_to_keep, **kwargs)
            out.logits[rows] = cf.logits.to(out.logits.dtype)
            cache.cf = cf.past_key_values
        cache.base = out.past_key_values
        out.past_key_values = cache
        return out


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def _allowed(attention_mask: torch.Tensor) -> torch.Tensor:
    """A 4D additive (or boolean) mask as booleans [B, L, L]: may query i attend to key j."""
    m = attention_mask[:, 0]
    return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2


def _real_and_pooled(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: its real (non-pad) tokens, and the tokens its classifier feature averages.

    2D mask: the real tokens. 4D mask: the tokens the row's last real token attends to
    (for a context followed by answer segments: the context and the last segment).
    A pad in a 4D mask attends only to itself and is attended by no other token.
    """
    B, L = input_ids.shape
    if attention_mask is None:
        real = torch.ones((B, L), dtype=torch.bool, device=input_ids.device)
        return real, real
    if attention_mask.dim() == 2:
        real = attention_mask.bool()
        return real, real
    allowed = _allowed(attention_mask)
    eye = torch.eye(L, dtype=torch.bool, device=allowed.device)
    others = allowed & ~eye
    real = others.any(-1) | others.any(-2)
    pooled = torch.zeros_like(real)
    for b in range(B):
        idx = real[b].nonzero()
        if len(idx):
            pooled[b] = allowed[b, int(idx[-1])] & real[b]
    return real, pooled


def _new_index(L: int, ins: _Insert) -> torch.Tensor:
    """Position in the routed row of each original position."""
    j = torch.arange(L)
    return ins.shift + j + torch.where(j >= ins.at, len(ins.ctx), 0)


def _original_keep(logits_to_keep, L: int, rows: list[int], device) -> torch.Tensor:
    """The original positions whose logits the caller asked for, for the routed rows: [n, K]."""
    n = len(rows)
    if isinstance(logits_to_keep, int):
        k = L if logits_to_keep == 0 else min(logits_to_keep, L)
        return torch.arange(L - k, L, device=device).expand(n, k)
    if logits_to_keep.dtype == torch.bool:
        raise ValueError("SeracModel: boolean logits_to_keep masks are not supported; pass positions")
    keep = logits_to_keep.to(device)
    return keep.expand(n, -1) if keep.dim() == 1 else keep[rows]


def _extend_mask(attention_mask, inserts: list[_Insert], width: int, L: int, new_ids: torch.Tensor):
    """The attention mask of the routed rows, with each edit's tokens visible where its row's first token is."""
    n, Lnew = len(inserts), L + width
    device = new_ids.device
    if attention_mask is None:
        attention_mask = torch.ones((max(i.row for i in inserts) + 1, L), dtype=torch.long, device=device)
    if attention_mask.dim() == 2:
        rows = []
        for ins in inserts:
            m = attention_mask[ins.row]
            rows.append(torch.cat([m.new_zeros(ins.shift), m[:ins.at], m.new_ones(len(ins.ctx)), m[ins.at:]]))
        return torch.stack(rows)
    old = _allowed(attention_mask)
    new = torch.zeros((n, Lnew, Lnew), dtype=torch.bool, device=device)
    for k, ins in enumerate(inserts):
        a = old[ins.row]
        idx = _new_index(L, ins).to(device)
        C, at = len(ins.ctx), ins.at
        cpos = ins.shift + at + torch.arange(C, device=device)
        new[k][idx[:, None], idx[None, :]] = a
        anchor = min(at, L - 1)  # the first token after the insertion point stands for the edit tokens
        new[k][cpos[:, None], cpos[None, :]] = torch.ones((C, C), dtype=torch.bool, device=device).tril()
        new[k][idx[:, None], cpos[None, :]] = a[:, anchor, None].expand(L, C)
        new[k][cpos[:, None], idx[None, :]] = a[anchor][None, :].expand(C, L) & (idx < cpos[0])[None, :]
        pads = torch.arange(ins.shift, device=device)
        new[k][pads, pads] = True
    dtype = attention_mask.dtype if attention_mask.dtype.is_floating_point else torch.float32
    out = torch.zeros((n, 1, Lnew, Lnew), dtype=dtype, device=device)
    return out.masked_fill_(~new[:, None], torch.finfo(dtype).min)
