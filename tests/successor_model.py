"""A tiny Llama whose next token depends only on the current one, through a chosen table.

Attention and MLP outputs are zeroed, so the residual stream is the current token's
embedding; each chained token gets its own embedding axis, and the lm head maps that
axis to its successor with a large logit. Tokens outside the table have a zero
embedding, hence uniform next-token probabilities. Known answers for engine and
editing-metric tests, on the byte-level tokenizer (one token per character).
"""

from __future__ import annotations

import torch

from editharm.models import random_model

LOGIT = 30.0


def token_of(tokenizer, char: str) -> int:
    ids = tokenizer(char, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (char, ids)
    return ids[0]


def successor_model(successors: dict[str, str | None], hidden: int = 64):
    """successors: character -> next character, or None for the EOS token."""
    model, tokenizer = random_model("llama", hidden=hidden, layers=1, heads=4)
    assert len(successors) <= hidden
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for axis, (char, nxt) in enumerate(successors.items()):
            model.model.embed_tokens.weight[token_of(tokenizer, char), axis] = 1.0
            target = tokenizer.eos_token_id if nxt is None else token_of(tokenizer, nxt)
            model.lm_head.weight[target, axis] = LOGIT
    return model, tokenizer
