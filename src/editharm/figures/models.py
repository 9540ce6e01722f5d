"""What the figures need to know of a model: whether it is a chat model, its base model, its size.

A model counts as a chat (instruction-tuned) model when its config name or its hub id
contains "chat" or "instruct", or ends in "-it" (`is_chat_model`). Its base model is the
one whose name is the same without that marker (`model_family`). A model's size is the
number of parameters stored in its converted safetensors files (`count_parameters`), so
no config key is needed for either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_CHAT = re.compile(r"chat|instruct|(?:^|[-_])it$", re.IGNORECASE)
_CHAT_SUFFIX = re.compile(r"[-_]?(?:chat|instruct|it)(?=$|[-_])", re.IGNORECASE)


def is_chat_model(name: str, spec: dict | None = None) -> bool:
    """A chat / instruction-tuned model: its name or hub id contains 'chat' or 'instruct', or ends in '-it'."""
    source = (spec or {}).get("source", {}) or {}
    texts = [name, source.get("hub_id") or "", Path(source.get("file") or "").stem]
    return any(_CHAT.search(t.split("/")[-1]) for t in texts if t)


def model_family(name: str) -> str:
    """The base model's name: the chat marker removed ('llama2-7b-chat' -> 'llama2-7b')."""
    return _CHAT_SUFFIX.sub("", name) or name


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in a model folder's safetensors files (headers only; tied weights count once)."""
    total, found = 0, False
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for key, entry in header.items():
            if key != "__metadata__":
                total += int(np.prod(entry["shape"])) if entry["shape"] else 1
                found = True
    return total if found else None


def model_info(config: dict, model_dirs: dict[str, str | Path]) -> dict[str, dict]:
    """Per model: parameter count (from its converted files, None if absent), chat flag, family, hub id."""
    out = {}
    for name, spec in (config.get("models") or {}).items():
        d = model_dirs.get(name)
        out[name] = {"params": count_parameters(d) if d and Path(d).exists() else None,
                     "chat": is_chat_model(name, spec), "family": model_family(name),
                     "hub_id": ((spec or {}).get("source") or {}).get("hub_id")}
    return out


def _info(model: str, info: dict) -> dict:
    return {"params": None, "chat": is_chat_model(model), "family": model_family(model), **(info.get(model) or {})}


def human_count(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))
