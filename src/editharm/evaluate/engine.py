"""The scoring engine shared by every task and by the editing metrics.

Three scoring modes, matching the item kinds of tasks/base.py:

score_choices  log-likelihood of each choice after a context. One row per item holds the
               context once and then, segment after segment, each choice's tokens except
               its last (the last token is only ever a target, never an input). A 4D
               attention mask lets a segment see the context and itself only, and its
               position ids restart at the context length, so every choice is scored
               exactly as if it followed the context alone while the context is computed
               once. The lm head runs only at the positions whose next-token distribution
               is read (for a small model it is a fifth of the forward's FLOPs).
generate       greedy decoding, batched with left padding, a KV cache, per-item stop
               sequences and token limits; finished rows leave the batch.
score_rolling  the log-likelihood of a whole text in lm-eval's disjoint rolling windows,
               each window scored as a one-choice unit of score_choices.

Both sort items by length (longest first, so an out-of-memory shows up at once and
padding stays small) and build their own padded tensors, so the tokenizer's padding
side does not change any number; `pad_side` picks the layout and the tests check that
left and right padding give the numbers of unbatched scoring.

Why packing: on SmolLM2-135M (2 shared CPU cores) SST-2 scored this way ran at 1.3x the
raw forward tokens/s (the skipped lm head), 2.9x the examples/s of one padded row per
choice, and TruthfulQA-style multi-token choices 1.8x faster than running the context
with a KV cache and expanding the cache across choices (benchmarks/bench_scoring.py).
A row that holds one segment only - an item with one choice (LAMBADA, a rolling window)
or whose choices are one token each (MMLU's letters: the row is the context alone) - needs
no segment mask: its mask is the causal one. Such rows are right-padded and run with no
mask at all, so no real token can see a pad and attention takes its fused causal kernel
(the explicit L x L mask cost +15% on three 2,304-token MMLU rows of SmolLM2, docs/benchmarks.md). A
wrapper that reads the mask for more than attention (SERAC pools its classifier feature
over the real tokens) is always given one.
The custom mask replaces the model's own, which would drop the window of sliding-window
layers (Gemma 3's local layers: a key more than `sliding_window` positions back is hidden).
On such a model an item whose sequences fit the window is packed as above (the window
hides nothing there); every other item is scored one choice per row, as a one-segment
row, so the model builds its own windowed and full masks (a wrapper is given a padding
mask to build them from). A per-layer-type dict
of 4D masks would keep the shared context, but wrappers that extend the mask they are
given (SERAC) take one tensor; only items longer than the window (512 tokens in
Gemma-3-270M) pay for their context once per choice.

A collapsed model (NaN or Inf logits) raises NonFiniteLogitsError; run_task turns it into
a recorded failure for that task instead of a crash of the whole run.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from editharm.models import head_logits
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, GenerationItem, RollingItem, RollingOutput, Task

# Memory bounds of one forward pass: padded input tokens, and kept logits (rows x kept
# positions x vocabulary, float32) - the logits dominate for large vocabularies.
MAX_BATCH_TOKENS = 16384
MAX_LOGIT_ELEMENTS = 1 << 27  # 512 MiB of float32
PADDING_SLACK = 1.15           # a batch's padded size over its real tokens, at most


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or Inf logits, so no score it gives means anything."""


# ---------------------------------------------------------------- shared helpers

def model_max_length(model) -> int | None:
    """Longest position the model has embeddings for (None: no limit known)."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def sliding_window(model) -> int | None:
    """The window of the model's sliding-attention layers, None if every layer sees the whole sequence.

    transformers' rule: on such a layer query position q sees key position k <= q only if
    k > q - window. A config may name a window no layer uses (layer_types all full).
    """
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return window


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _mask_dtype(model) -> torch.dtype:
    try:
        dtype = next(model.parameters()).dtype
    except StopIteration:
        return torch.float32
    return dtype if dtype.is_floating_point else torch.float32


def _progress(total: int, desc: str, enabled: bool):
    # stderr, counts and ETA; quiet for tiny jobs so unit tests and short calls stay clean
    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=not enabled or total < 2,
                dynamic_ncols=True, mininterval=1.0)


def _check_finite(logits: torch.Tensor, what: str) -> None:
    # One reduction first (a sum is finite iff every term is, short of magnitudes near the
    # dtype's limit): an elementwise isfinite over [B, K, vocab] logits cost 7% of PIQA's time.
    if not torch.isfinite(logits.sum(dtype=torch.float64)) and not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).sum().item()
        raise NonFiniteLogitsError(f"model produced {bad} non-finite logits while {what} (NaN or Inf: a collapsed model)")


def _add_stat(stats: dict | None, key: str, value: int) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + value


# ---------------------------------------------------------------- tokenisation

def encode_choices(tokenizer, context: str, choices: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Context tokens and each choice's continuation tokens, as lm-evaluation-harness does.

    Trailing whitespace of the context moves to the front of every continuation (BPE
    vocabularies glue a space to the next word: "answer:" + " positive"). The context
    is encoded alone; each continuation is what follows those tokens in the encoding of
    context + continuation, so boundary merges are handled the way the model saw text in
    training. Special tokens follow the tokenizer's default (a BOS for Llama-2, as the
    papers' code did). An empty context becomes the BOS (else EOS) token, so the first
    choice token has something to be predicted from.
    """
    stripped = context.rstrip()
    moved = context[len(stripped):]
    continuations = [moved + c for c in choices]
    if not stripped:
        first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        conts = tokenizer(continuations, add_special_tokens=False)["input_ids"]
        return [first], [list(c) for c in conts]
    ctx = list(tokenizer(stripped)["input_ids"])
    wholes = tokenizer([stripped + c for c in continuations])["input_ids"]
    conts = []
    for text, whole in zip(continuations, wholes):
        cont = list(whole[len(ctx):])
        if not cont:
            # the whole continuation merged into the context's last token: score it on its own
            cont = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not cont:
            raise ValueError(f"choice {text!r} encodes to no tokens")
        conts.append(cont)
    return ctx, conts


# ---------------------------------------------------------------- log-likelihood scoring

@dataclass
class _Unit:
    """One item packed for scoring: the context once, then each choice's segment."""

    index: int
    ctx: list[int]
    conts: list[list[int]]
    first: int = 0  # the item's choice index of conts[0] (an item may be split one choice per unit)

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(c) - 1 for c in self.conts)

    @property
    def span(self) -> int:
        """Positions of the longest choice's own sequence: the distance a sliding window must cover."""
        return len(self.ctx) + max(len(c) for c in self.conts) - 1

    @property
    def n_keep(self) -> int:
        return 1 + sum(len(c) - 1 for c in self.conts)

    @property
    def causal(self) -> bool:
        """One segment only (one choice, or one-token choices: the row is the context), so its mask is the causal one."""
        return len(self.conts) == 1 or all(len(c) == 1 for c in self.conts)


def _make_unit(index: int, ctx: list[int], conts: list[list[int]], max_len: int | None, item_id: str) -> _Unit:
    if max_len is not None:
        longest = max(len(c) for c in conts)
        room = max_len - longest
        if room < 1:
            raise ValueError(f"item {item_id}: a choice of {longest} tokens leaves no room for context "
                             f"within the model's {max_len} positions")
        # Left-truncate the context (the end of the context matters most), as lm-eval does.
        ctx = ctx[-room:]
    return _Unit(index, ctx, conts)


def _batches(units: list[_Unit], batch_size: int, vocab: int) -> Iterator[list[_Unit]]:
    """Consecutive units (sorted longest first) within the row, token, logit and padding budgets.

    A batch also ends where padding would exceed PADDING_SLACK of its real tokens: items of
    very different lengths (PIQA's solutions) otherwise spend a quarter of the forward
    pass on pads, and on a CPU a smaller batch costs almost nothing per token.
    """
    max_keep_elems = max(1, MAX_LOGIT_ELEMENTS // max(vocab, 1))
    batch: list[_Unit] = []
    longest = keep = real = 0
    for unit in units:
        new_longest, new_keep = max(longest, unit.length), max(keep, unit.n_keep)
        n = len(batch) + 1
        if batch and (n > batch_size or n * new_longest > MAX_BATCH_TOKENS or n * new_keep > max_keep_elems
                      or n * new_longest > PADDING_SLACK * (real + unit.length)):
            yield batch
            batch, new_longest, new_keep, real = [], unit.length, unit.n_keep, 0
        batch.append(unit)
        longest, keep = new_longest, new_keep
        real += unit.length
    if batch:
        yield batch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor     # [B, L]
    attention_mask: torch.Tensor | None  # [B, 1, L, L] additive float mask, [B, L] padding mask, or None (MASKS)
    position_ids: torch.Tensor  # [B, L]
    keep: torch.Tensor          # [B, K] positions whose logits are read
    targets: list[list[list[tuple[int, int]]]]  # per row, per choice: (kept index, token id)
    n_tokens: int               # real (non-pad) input tokens


MASKS = ("segments", "padding", "none")


def pack_units(units: Sequence[_Unit], pad_id: int, pad_side: str, dtype: torch.dtype, device,
               mask: str = "segments") -> PackedBatch:
    """Padded input ids, the attention mask, position ids and read positions.

    mask  "segments": the 4D segment mask, for any unit;
          "padding": a [B, L] mask of real tokens, from which the model builds its own causal
          (and sliding-window) masks;
          "none": no mask; right padding only, so that no real token attends to a pad.
          The last two only for causal units (one segment), whose segment mask is the causal one.
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if mask != "segments" and not all(u.causal for u in units):
        raise ValueError(f"pack_units: mask={mask!r} cannot keep several choices of a row apart; "
                         "split the items one choice per unit")
    if mask == "none" and pad_side != "right":
        raise ValueError("pack_units: without a mask only right padding is exact (a left pad would be attended)")
    B = len(units)
    L = max(u.length for u in units)
    K = max(u.n_keep for u in units)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)  # -1 pad, 0 context, k+1 choice k
    pos = torch.zeros((B, L), dtype=torch.long)
    keep = torch.zeros((B, K), dtype=torch.long)
    targets: list[list[list[tuple[int, int]]]] = []
    n_tokens = 0
    for b, u in enumerate(units):
        off = L - u.length if pad_side == "left" else 0
        C = len(u.ctx)
        row_ids, row_seg, row_pos = list(u.ctx), [0] * C, list(range(C))
        row_keep = [off + C - 1]  # the last context token predicts every choice's first token
        row_targets = []
        for k, cont in enumerate(u.conts):
            start = len(row_ids)
            body = cont[:-1]
            row_ids += body
            row_seg += [k + 1] * len(body)
            row_pos += list(range(C, C + len(body)))
            first_keep = len(row_keep)
            row_keep += [off + start + j for j in range(len(body))]
            row_targets.append([(0, cont[0])] + [(first_keep + j, cont[j + 1]) for j in range(len(body))])
        n = len(row_ids)
        ids[b, off:off + n] = torch.tensor(row_ids)
        seg[b, off:off + n] = torch.tensor(row_seg)
        pos[b, off:off + n] = torch.tensor(row_pos)
        keep[b, :len(row_keep)] = torch.tensor(row_keep)
        keep[b, len(row_keep):] = row_keep[0]  # filler: a real position, read and ignored
        targets.append(row_targets)
        n_tokens += n
    if mask == "none":
        # Pads continue their row's positions (they end at L, as the longest row does):
        # transformers reads a position that does not follow the previous one as the start
        # of a packed sequence and would build a block mask, losing the fused causal kernel.
        for b, u in enumerate(units):
            pos[b, u.length:] = torch.arange(u.length, L)
        return PackedBatch(ids.to(device), None, pos.to(device), keep.to(device), targets, n_tokens)
    if mask == "padding":
        return PackedBatch(ids.to(device), (seg >= 0).long().to(device), pos.to(device), keep.to(device), targets,
                           n_tokens)
    key_seg, query_seg = seg[:, None, :], seg[:, :, None]
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    allowed = causal & (key_seg >= 0) & ((key_seg == 0) | (key_seg == query_seg))
    # A pad query attends to itself, so no softmax row is empty.
    allowed |= torch.eye(L, dtype=torch.bool) & (query_seg < 0)
    additive = torch.zeros((B, 1, L, L), dtype=dtype)
    additive.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return PackedBatch(ids.to(device), additive.to(device), pos.to(device), keep.to(device), targets, n_tokens)


def _mask_groups(model, units: list[_Unit]) -> list[tuple[list[_Unit], str]]:
    """The units grouped by the attention mask they are packed with (module docstring).

    Causal units go without a mask to a transformers model, which then applies its own causal
    and sliding-window masks; a wrapper gets a padding mask on a sliding-window model (so the
    window is kept) and the segment mask elsewhere. A packed unit whose longest choice reaches
    past a sliding window is split into one causal unit per choice; the rest keep the segment mask.
    """
    window = sliding_window(model)
    causal: list[_Unit] = []
    packed: list[_Unit] = []
    for u in units:
        if u.causal:
            causal.append(u)
        elif window is not None and u.span > window:
            causal += [_Unit(u.index, u.ctx, [c], first=u.first + k) for k, c in enumerate(u.conts)]
        else:
            packed.append(u)
    if isinstance(model, PreTrainedModel):
        causal_mask = "none"
    else:
        causal_mask = "padding" if window is not None else "segments"
    return [(group, mask) for group, mask in ((causal, causal_mask), (packed, "segments")) if group]


def _target_logits(model, batch: PackedBatch, rows_t: torch.Tensor, kept_t: torch.Tensor, vocab: int):
    """Yield ([n, V] float32 logits, indices of the n target entries they belong to).

    Within the logit budget: one forward pass keeping the batch's positions. Over it: a
    transformers causal LM runs once and its head is applied to the target positions'
    hidden states in slices; a wrapper without a separate head (SERAC's) runs once per
    slice of kept positions.
    """
    n = len(rows_t)
    if batch.keep.numel() * vocab <= MAX_LOGIT_ELEMENTS:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    logits_to_keep=batch.keep, use_cache=False)
        yield out.logits.float()[rows_t, kept_t], torch.arange(n, device=rows_t.device)
        return
    step = max(1, MAX_LOGIT_ELEMENTS // vocab)
    decoder = getattr(model, "base_model", None)
    if decoder is not None and decoder is not model and model.get_output_embeddings() is not None:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state
        positions = batch.keep[rows_t, kept_t]
        for start in range(0, n, step):
            part = torch.arange(start, min(n, start + step), device=rows_t.device)
            yield head_logits(model, hidden[rows_t[part], positions[part]]), part
        return
    slice_width = max(1, step // batch.keep.shape[0])
    for k0 in range(0, batch.keep.shape[1], slice_width):
        part = ((kept_t >= k0) & (kept_t < k0 + slice_width)).nonzero(as_tuple=True)[0]
        if len(part) == 0:
            continue
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    logits_to_keep=batch.keep[:, k0:k0 + slice_width], use_cache=False)
        yield out.logits.float()[rows_t[part], kept_t[part] - k0], part


@torch.inference_mode()
def _score_batch(model, batch: PackedBatch) -> tuple[list[list[list[float]]], list[list[list[int]]]]:
    """Per row, per choice: the log-probability and the argmax at each target token."""
    rows, kept, toks = [], [], []
    for b, row in enumerate(batch.targets):
        for choice in row:
            for k, t in choice:
                rows.append(b)
                kept.append(k)
                toks.append(t)
    device = batch.input_ids.device
    rows_t, kept_t, toks_t = (torch.tensor(x, device=device) for x in (rows, kept, toks))
    vocab = model.config.vocab_size
    logprob_t = torch.empty(len(rows), dtype=torch.float32, device=device)
    argmax_t = torch.empty(len(rows), dtype=torch.long, device=device)
    # One unit may keep more logits than the budget (a long rolling window of a large-vocabulary
    # model: 2,048 positions x Gemma's 262,144 tokens is 2 GiB of float32, several times over in
    # the softmax); the logits are then made a slice at a time.
    for logits, entries in _target_logits(model, batch, rows_t, kept_t, vocab):
        _check_finite(logits, "scoring choices")
        logprob_t[entries] = logits.gather(1, toks_t[entries, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        argmax_t[entries] = logits.argmax(dim=-1)
    logprob, argmax = logprob_t.tolist(), argmax_t.tolist()
    lp_out, am_out, i = [], [], 0
    for row in batch.targets:
        lp_row, am_row = [], []
        for choice in row:
            lp_row.append(logprob[i:i + len(choice)])
            am_row.append(argmax[i:i + len(choice)])
            i += len(choice)
        lp_out.append(lp_row)
        am_out.append(am_row)
    return lp_out, am_out


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return tid
    return 0


def score_choices(model, tokenizer, items: Sequence[ChoiceItem], batch_size: int = 16, progress: bool = True,
                  token_details: bool = False, pad_side: str | None = None, stats: dict | None = None,
                  ) -> list[ChoiceOutput]:
    """Log-likelihood of every choice of every item given its context (outputs aligned with items).

    token_details  also return each choice's token ids and the model's argmax at each
                   (teacher-forced) position, for token-level accuracy
    pad_side       "left" or "right" layout of the padded batches that carry a mask (default:
                   the tokenizer's side; rows without one are right-padded); the numbers do
                   not depend on it
    stats          if given, `tokens` (real input tokens) and `tokens_unshared` (what one
                   pass per choice would have cost) are added to it
    """
    if not items:
        return []
    pad_side = pad_side or getattr(tokenizer, "padding_side", "right") or "right"
    max_len = model_max_length(model)
    units = []
    for i, item in enumerate(items):
        if not item.choices:
            raise ValueError(f"item {item.id}: no choices to score")
        ctx, conts = encode_choices(tokenizer, item.context, item.choices)
        units.append(_make_unit(i, ctx, conts, max_len, item.id))
    _add_stat(stats, "tokens_unshared", sum(len(u.ctx) * len(u.conts) + sum(len(c) for c in u.conts) for u in units))
    conts_of = {u.index: u.conts for u in units}
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    device, dtype, pad_id = _device(model), _mask_dtype(model), _pad_id(tokenizer)
    logprobs: list[list[float]] = [[0.0] * len(it.choices) for it in items]
    argmaxes: list[list[list[int]]] = [[[] for _ in it.choices] for it in items]
    pending = [len(it.choices) for it in items]
    with _progress(len(items), "scoring choices", progress) as bar:
        for group, mask in _mask_groups(model, units):
            group.sort(key=lambda u: u.length, reverse=True)
            side = "right" if mask == "none" else pad_side
            for batch_units in _batches(group, batch_size, vocab):
                packed = pack_units(batch_units, pad_id, side, dtype, device, mask=mask)
                _add_stat(stats, "tokens", packed.n_tokens)
                batch_lp, batch_am = _score_batch(model, packed)
                for unit, lp, am in zip(batch_units, batch_lp, batch_am):
                    for k, (choice_lp, choice_am) in enumerate(zip(lp, am), start=unit.first):
                        logprobs[unit.index][k] = math.fsum(choice_lp)
                        argmaxes[unit.index][k] = choice_am
                    pending[unit.index] -= len(unit.conts)
                    bar.update(int(pending[unit.index] == 0))
    results = []
    for i, item in enumerate(items):
        conts, am = conts_of[i], argmaxes[i]
        results.append(ChoiceOutput(
            logprobs=logprobs[i],
            token_counts=[len(c) for c in conts],
            char_counts=[len(c) for c in item.choices],
            is_greedy=[a == c for a, c in zip(am, conts)],
            token_ids=[list(c) for c in conts] if token_details else [],
            argmax_ids=am if token_details else [],
        ))
    return results


# ---------------------------------------------------------------- rolling log-likelihood (perplexity)

def rolling_windows(tokens: Sequence[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (context_len 1): (context, predicted tokens) pairs.

    Every token is predicted exactly once. The first window predicts up to max_len tokens
    from `prefix`; each later one predicts the next max_len tokens from the one token
    before them, except the last, whose context is as many earlier tokens as fill the
    max_len positions. A window's input (context + predicted tokens but the last) is
    never longer than max_len.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows = [([prefix], tokens[:first])]
    start = first
    while start < len(tokens):
        end = min(start + max_len, len(tokens))
        windows.append((tokens[end - max_len - 1:start], tokens[start:end]))
        start = end
    return windows


def score_rolling(model, tokenizer, items: Sequence[RollingItem], batch_size: int = 16, progress: bool = True,
                  stats: dict | None = None) -> list[RollingOutput]:
    """Log-likelihood of every item's whole text, in rolling windows (outputs aligned with items).

    Each window is scored as a one-choice unit of the choice scorer (context, then the
    predicted tokens), so packing, batching and the logit budget are shared with it. The
    window length is the model's positions (2,048 when unknown, as lm-eval) capped by the
    item's max_window: a window's logits are kept at every position, and 8,192 positions
    of a 49,152-token vocabulary would be 1.6 GB of float32.
    """
    if not items:
        return []
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("rolling log-likelihood needs a BOS or EOS token to predict the first token from")
    model_len = model_max_length(model) or 2048
    units: list[_Unit] = []
    owner: list[int] = []
    counts = [0] * len(items)
    for i, item in enumerate(items):
        tokens = tokenizer(item.text, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"item {item.id}: text encodes to no tokens")
        counts[i] = len(tokens)
        max_len = min(model_len, item.max_window) if item.max_window else model_len
        for ctx, pred in rolling_windows(tokens, prefix, max_len):
            units.append(_Unit(len(units), ctx, [pred]))
            owner.append(i)
    units.sort(key=lambda u: u.length, reverse=True)
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    device, dtype, pad_id = _device(model), _mask_dtype(model), _pad_id(tokenizer)
    [(units, mask)] = _mask_groups(model, units)  # windows are causal units: one group
    pad_side = "right" if mask == "none" else (getattr(tokenizer, "padding_side", "right") or "right")
    window_lp = [0.0] * len(units)
    with _progress(len(units), "scoring windows", progress) as bar:
        for batch_units in _batches(units, batch_size, vocab):
            packed = pack_units(batch_units, pad_id, pad_side, dtype, device, mask=mask)
            if len({u.length for u in batch_units}) == 1:
                # no padding either: a wrapper too can go without a mask, which lets attention
                # take its fused causal kernel
                packed.attention_mask = None
            _add_stat(stats, "tokens", packed.n_tokens)
            logprobs, _ = _score_batch(model, packed)
            for unit, lp in zip(batch_units, logprobs):
                window_lp[unit.index] = math.fsum(lp[0])
            bar.update(len(batch_units))
    per_item: list[list[float]] = [[] for _ in items]
    for index, lp in enumerate(window_lp):
        per_item[owner[index]].append(lp)
    return [RollingOutput(logprob=math.fsum(lps), token_count=n, windows=len(lps)) for lps, n in zip(per_item, counts)]


# ---------------------------------------------------------------- greedy generation

def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return ids


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop sequence starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts: list[list[int]], limits: list[int], stops: list[tuple[str, ...]],
                    eos: set[int], pad_id: int, device, stats: dict | None) -> list[str]:
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(p)
        mask[b, L - len(p):] = 1
    # Left padding: each row's positions count its own tokens, starting at 0.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1].float()
    last = positions[:, -1]
    active = list(range(B))
    generated: list[list[int]] = [[] for _ in range(B)]
    texts: list[str] = [""] * B
    _add_stat(stats, "tokens", sum(len(p) for p in prompts))
    while active:
        _check_finite(logits, "generating")
        chosen = logits.argmax(dim=-1)
        keep = []
        for j, row in enumerate(active):
            token = int(chosen[j])
            if token in eos:
                texts[row] = tokenizer.decode(generated[row], skip_special_tokens=True)
                continue
            generated[row].append(token)
            text = tokenizer.decode(generated[row], skip_special_tokens=True)
            cut = first_stop(text, stops[row])
            if cut is not None:
                texts[row] = text[:cut]
            elif len(generated[row]) >= limits[row]:
                texts[row] = text
            else:
                keep.append(j)
        _add_stat(stats, "tokens", len(active))
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, last, chosen = mask[index], last[index], chosen[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last = last + 1
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=last[:, None],
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
    return texts


def generate(model, tokenizer, items: Sequence[GenerationItem], batch_size: int = 16, progress: bool = True,
             stats: dict | None = None) -> list[str]:
    """Greedy continuation of every prompt, cut before the first stop sequence (outputs aligned with items).

    Generation ends at a stop sequence, an EOS token or the item's max_new_tokens. The
    prompt is encoded with the tokenizer's default special tokens and left-truncated to
    fit the model's positions. `stats` (if given) gets `tokens`: prompt plus generated.
    """
    if not items:
        return []
    max_len = model_max_length(model)
    encoded = tokenizer([it.prompt for it in items])["input_ids"]
    prompts = []
    for item, ids in zip(items, encoded):
        if item.max_new_tokens < 1:
            raise ValueError(f"item {item.id}: max_new_tokens must be at least 1, got {item.max_new_tokens}")
        ids = list(ids)
        if max_len is not None:
            ids = ids[-max(1, max_len - item.max_new_tokens):]
        prompts.append(ids)
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]), reverse=True)
    eos, pad_id, device = _eos_ids(model, tokenizer), _pad_id(tokenizer), _device(model)
    results: list[str] = [""] * len(items)
    with _progress(len(items), "generating", progress) as bar:
        start = 0
        while start < len(order):
            # as many rows as the batch size and the token budget allow
            longest = len(prompts[order[start]]) + max(items[i].max_new_tokens for i in order[start:start + batch_size])
            size = max(1, min(batch_size, MAX_BATCH_TOKENS // max(longest, 1)))
            chunk = order[start:start + size]
            texts = _generate_batch(model, tokenizer, [prompts[i] for i in chunk],
                                    [items[i].max_new_tokens for i in chunk], [tuple(items[i].stop) for i in chunk],
                                    eos, pad_id, device, stats)
            for i, text in zip(chunk, texts):
                results[i] = text
            bar.update(len(chunk))
            start += size
    return results


# ---------------------------------------------------------------- tasks and throughput

def run_task(model, tokenizer, task: Task, rows: Sequence[dict], shots: Sequence[dict] | None = None,
             batch_size: int = 16, progress: bool = True, return_outputs: bool = False) -> dict[str, Any]:
    """Score one task on prepared rows: metrics plus speed, or a recorded failure.

    Returns {"status": "ok", "metrics", "n", "seconds", "tokens", "examples_per_s",
    "tokens_per_s"} (and "outputs" when asked: predictions, or per-choice log-probs).
    If the model's logits are NaN/Inf it returns {"status": "failed", "reason", ...}
    instead of raising, so one collapsed checkpoint does not stop the workflow.
    """
    start = time.perf_counter()
    items = task.items(rows, shots)
    stats: dict[str, int] = {}
    try:
        if task.KIND == "choice":
            outputs: list = score_choices(model, tokenizer, items, batch_size=batch_size, progress=progress, stats=stats)
        elif task.KIND == "generation":
            outputs = generate(model, tokenizer, items, batch_size=batch_size, progress=progress, stats=stats)
        elif task.KIND == "rolling":
            outputs = score_rolling(model, tokenizer, items, batch_size=batch_size, progress=progress, stats=stats)
        else:
            raise ValueError(f"task {task.NAME}: KIND must be 'choice', 'generation' or 'rolling', got {task.KIND!r}")
    except NonFiniteLogitsError as e:
        return {"status": "failed", "reason": str(e), "task": task.NAME, "n": len(items), "metrics": {},
                "seconds": time.perf_counter() - start}
    metrics = task.score(items, outputs)
    seconds = time.perf_counter() - start
    tokens = stats.get("tokens", 0)
    result: dict[str, Any] = {
        "status": "ok", "task": task.NAME, "metrics": metrics, "n": len(items), "seconds": seconds,
        "tokens": tokens, "examples_per_s": len(items) / seconds if seconds > 0 else float("inf"),
        "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
    }
    if "tokens_unshared" in stats:
        result["tokens_unshared"] = stats["tokens_unshared"]
    if return_outputs:
        result["outputs"] = [o if isinstance(o, str) else o.logprobs for o in outputs]
    return result


@torch.inference_mode()
def forward_throughput(model, tokenizer, n_tokens: int, seq_len: int, batch_size: int = 16, seed: int = 0) -> float:
    """Raw forward speed in tokens/s: plain unpadded batches with full logits, after one warm-up pass.

    The reference the engine's throughput is compared with: what a forward pass costs
    when no token is padding and no work is shared or skipped.
    """
    vocab = min(getattr(model.config, "vocab_size", None) or len(tokenizer), len(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(_device(model))
    model(input_ids=ids, use_cache=False)
    passes = max(1, math.ceil(n_tokens / (batch_size * seq_len)))
    start = time.perf_counter()
    for _ in range(passes):
        model(input_ids=ids, use_cache=False)
    return passes * batch_size * seq_len / (time.perf_counter() - start)
