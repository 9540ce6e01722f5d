"""The prompts the locate-then-edit methods (ROME, MEMIT, PMET, AlphaEdit) run on.

A request's prompt has a "{}" where its subject goes; the methods read the model at the
subject's last token, in the plain prompt and in context templates (the prompt behind
a short text the model itself wrote, ROME's way of making an edit hold in other
contexts). Here: filling templates and finding the subject's last token, the target's
token ids, generating the context templates, the MLP keys at the subject
(`subject_keys`), and padding token-id rows into batches (which the key statistics in
covariance.py and SERAC use too).
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import torch

from editharm import nethook
from editharm.requests import EditRequest

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


# ------------------------------------------------------------------ prompts and tokens

def fill(template: str, prompt: str, subject: str) -> tuple[str, int, int]:
    """Put `prompt` into a context template and `subject` into the prompt.

    Returns the text and the subject's character span. Plain replacement rather than
    str.format, so braces elsewhere in a prompt do no harm.
    """
    outer = template.replace("{}", prompt, 1)
    start = template.index("{}") + prompt.index("{}")
    text = outer[:start] + subject + outer[start + 2:]
    return text, start, start + len(subject)


def tokenize_at_subject(tokenizer, text: str, start: int, end: int) -> tuple[list[int], int]:
    """Token ids of `text` and the index of the last token overlapping the subject span."""
    if end <= start:
        raise ValueError(f"empty subject in prompt {text!r}")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        if hits:
            return ids, hits[-1]
    else:
        ids = list(tokenizer(text)["input_ids"])
    # Slow tokenizers (no offsets): ROME's rule, the length of the text up to the subject's end.
    return ids, len(tokenizer(text[:end])["input_ids"]) - 1


def target_ids(tokenizer, prompt_text: str, target: str) -> list[int]:
    """Token ids of the answer as the model would read it right after the prompt.

    The answer follows the prompt after one space (ROME prepends " "). Tokenising the
    whole sentence and removing the prompt's tokens keeps tokenizers that treat a
    leading space specially (SentencePiece) from adding a stray space token.
    """
    answer = target if target.startswith(" ") else " " + target
    prompt = list(tokenizer(prompt_text)["input_ids"])
    whole = list(tokenizer(prompt_text + answer)["input_ids"])
    if len(whole) > len(prompt) and whole[:len(prompt)] == prompt:
        ids = whole[len(prompt):]
        if tokenizer.eos_token_id is not None and ids and ids[-1] == tokenizer.eos_token_id and not answer.endswith(tokenizer.eos_token or "\0"):
            ids = ids[:-1]
        if ids:
            return ids
    ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


# ------------------------------------------------------------------ context templates

def generate_context_templates(model, tokenizer, length_params: Sequence[Sequence[int]], seed: int = 0,
                               seed_words: Sequence[str] = SEED_WORDS, top_k: int = 5) -> list[list[str]]:
    """ROME's context templates: ["{}"] then, per (length, count), `count` sampled prefixes + ". {}".

    Each prefix is `length` tokens long including its seed word, sampled top-k from the
    model itself; count/len(seed_words) prefixes start with each seed word (as in
    EasyEdit/MEMIT, since an instruct model's BOS token starts chat turns, not prose).
    Seeded, so the same model and seed give the same templates.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    groups: list[list[str]] = [["{}"]]
    for length, count in length_params:
        per_word = max(1, int(count) // len(seed_words))
        group = []
        for word in seed_words:
            ids = torch.tensor([tokenizer(word)["input_ids"]] * per_word, device=device)
            ids = _sample(model, ids, int(length), gen, top_k)
            for row in ids.tolist():
                text = unicodedata.normalize("NFKD", tokenizer.decode(row, skip_special_tokens=True))
                text = " ".join(text.replace("{", " ").replace("}", " ").split())
                group.append(text + ". {}")
        groups.append(group)
    return groups


@torch.no_grad()
def _sample(model, ids: torch.Tensor, length: int, gen: torch.Generator, top_k: int) -> torch.Tensor:
    past = None
    step_ids = ids
    while ids.shape[1] < length:
        out = model(input_ids=step_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
        top = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        choice = torch.multinomial(top.values / top.values.sum(-1, keepdim=True), 1, generator=gen)
        step_ids = top.indices.gather(1, choice).to(ids.device)
        ids = torch.cat([ids, step_ids], dim=1)
    return ids


def context_templates(model, tokenizer, context, length_params: Sequence[Sequence[int]]) -> list[list[str]]:
    """The method's context templates, generated once and kept in context.state for later edits."""
    params = [[int(a), int(b)] for a, b in length_params]
    state = context.state
    if state.get("context_templates") is None or state.get("context_template_params") != params:
        state["context_templates"] = generate_context_templates(model, tokenizer, params, seed=context.seed)
        state["context_template_params"] = params
    return state["context_templates"]


# ------------------------------------------------------------------ keys

@torch.no_grad()
def subject_keys(model, tokenizer, layout, requests: Sequence[EditRequest], layers: Sequence[int],
                 template_groups: Sequence[Sequence[str]], group_mean: bool = False) -> dict[int, torch.Tensor]:
    """Mean mlp_down input at the subject's last token over the context templates: {layer: [R, d_ff]}.

    group_mean=False averages all templates alike (ROME); True averages within each
    group of templates first and then over groups (MEMIT's compute_ks).
    """
    flat = [(g, t) for g, group in enumerate(template_groups) for t in group]
    rows, where = [], []
    for r, req in enumerate(requests):
        for g, t in flat:
            text, a, b = fill(t, req.prompt, req.subject)
            ids, pos = tokenize_at_subject(tokenizer, text, a, b)
            rows.append(ids[:pos + 1])  # later tokens cannot change this position (causal)
            where.append((r, g))
    names = {l: layout.mlp_down.format(l) for l in layers}
    keys = {l: [] for l in layers}
    device = next(model.parameters()).device
    for chunk in range(0, len(rows), 64):
        batch = rows[chunk:chunk + 64]
        ids = pad_rows(batch, 0).to(device)
        last = torch.tensor([len(r) - 1 for r in batch], device=device)
        with nethook.capture(model, list(names.values()), inputs=True, outputs=False,
                             stop_after=names[max(layers)]) as rec:
            nethook.run_until_stopped(lambda: model(input_ids=ids, use_cache=False))
        for l, name in names.items():
            keys[l].append(rec[name].input[torch.arange(len(batch), device=device), last].float())
    result = {}
    n_groups = len(template_groups)
    for l in layers:
        k = torch.cat(keys[l])  # [R * n_templates, d_ff]
        out = torch.zeros(len(requests), k.shape[1], dtype=k.dtype, device=k.device)
        if group_mean:
            for i, (r, g) in enumerate(where):
                out[r] += k[i] / (len(template_groups[g]) * n_groups)
        else:
            for i, (r, _) in enumerate(where):
                out[r] += k[i] / len(flat)
        result[l] = out
    return result


# ------------------------------------------------------------------ padding

def length_buckets(lengths: Sequence[int], slack: float = 1.15, max_rows: int = 64) -> list[list[int]]:
    """Row indices grouped by length so that padding adds at most ~15% work per group."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    total = 0
    for i in order:
        g = groups[-1] if groups else None
        if g and len(g) < max_rows and (len(g) + 1) * lengths[g[0]] <= slack * (total + lengths[i]):
            g.append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def pad_rows(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """Token-id rows as one [rows, longest] batch, each row from position 0, `pad` after it."""
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one right-padded batch, with the boolean mask of real tokens."""
    ids = pad_rows(rows, pad)
    real = torch.zeros(ids.shape, dtype=torch.bool)
    for i, r in enumerate(rows):
        real[i, :len(r)] = True
    return ids, real
