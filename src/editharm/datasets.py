"""Dataset formats: raw downloaded files -> one normalised JSONL per dataset.

Each format is a function `(raw_dir: Path, spec: dict) -> Iterable[dict]` registered
under a name with `@register_format`. A dataset in config names its `format`; the
prepare_dataset rule calls `prepare(...)`. Edit-set formats live in editsets.py,
corpus formats in corpus.py, and each downstream task registers its own formats in
its module under evaluate/tasks/, so a task owns its data handling.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable, Iterable

from editharm.io import write_jsonl

Normaliser = Callable[[Path, dict], Iterable[dict]]
_FORMATS: dict[str, Normaliser] = {}


def register_format(name: str) -> Callable[[Normaliser], Normaliser]:
    def deco(fn: Normaliser) -> Normaliser:
        if name in _FORMATS and _FORMATS[name] is not fn:
            raise ValueError(f"dataset format {name!r} registered twice")
        _FORMATS[name] = fn
        return fn

    return deco


def _import_format_modules() -> None:
    for module in ("editharm.editsets", "editharm.corpus"):
        importlib.import_module(module)
    import editharm.evaluate.tasks as tasks_pkg

    for info in pkgutil.iter_modules(tasks_pkg.__path__):
        importlib.import_module(f"editharm.evaluate.tasks.{info.name}")


def known_formats() -> list[str]:
    _import_format_modules()
    return sorted(_FORMATS)


def get_format(name: str) -> Normaliser:
    _import_format_modules()
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown dataset format {name!r}; known formats: {', '.join(sorted(_FORMATS))}") from None


def prepare(raw_dir: str | Path, spec: dict, out_path: str | Path) -> int:
    """Normalise the raw files of one dataset into `out_path` (JSONL); returns the record count."""
    rows = get_format(spec["format"])(Path(raw_dir), spec)
    return write_jsonl(out_path, rows)
