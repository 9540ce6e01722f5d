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
from json import JSONDecodeError
from pathlib import Path
from typing import Callable, Iterable

from editharm.io import DataError, write_jsonl

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
    """Normalise the raw files of one dataset into `out_path` (JSONL); returns the record count.

    A malformed raw file is reported by where it came from (the mirror file or URL), not
    only by its copy in the cache, with the fix that fits: a cache copy changed since it was
    verified is fetched again; a source whose bytes match config's sha256 is itself broken.
    """
    normalise = get_format(spec["format"])
    try:
        return write_jsonl(out_path, normalise(Path(raw_dir), spec))
    except ValueError as e:  # DataError, json.JSONDecodeError, UnicodeDecodeError: a raw file is malformed
        # A decoder's own error names no file: then every raw file is a suspect.
        origin = describe_origin(Path(raw_dir), str(e), all_if_unnamed=isinstance(e, (JSONDecodeError, UnicodeDecodeError)))
        if not origin:
            raise
        raise DataError(f"{e}\n{origin}") from e


def describe_origin(raw_dir: Path, message: str, all_if_unnamed: bool = False) -> str:
    """Where the raw files named in `message` came from, and how to fix them ("" if it names none,
    unless `all_if_unnamed`)."""
    from editharm.io import read_json, sha256_file

    manifest_path = raw_dir / "manifest.json"
    if not manifest_path.is_file():
        return ""
    entries = (read_json(manifest_path).get("files") or {}).get("files") or {}
    named = {n: e for n, e in entries.items() if str(raw_dir / n) in message} or (entries if all_if_unnamed else {})
    lines = []
    for name, entry in sorted(named.items()):
        copy, location, recorded = raw_dir / name, entry.get("location"), entry.get("sha256")
        if entry.get("kind") == "file" and copy.is_file() and sha256_file(copy) != recorded:
            lines.append(f"{copy} changed after it was copied from {location} and verified (sha256 then {recorded}). "
                         f"Delete {raw_dir} and rerun: the download step copies it again.")
        elif entry.get("source") == "mirror":
            lines.append(f"{copy} is a verified copy of the mirror file {location}, whose sha256 {recorded} is the one in "
                         f"config: the mirror file itself is malformed (e.g. truncated). Replace {location} with a complete "
                         "copy from the dataset's canonical source (`url`/`hub` in config) and put its sha256 in config, "
                         "or remove it from the mirror so that the canonical source is used.")
        else:
            lines.append(f"{copy} was downloaded from {location} and matches config's sha256 {recorded}: config pins a "
                         "malformed file. Check the url/revision and the hash of this file in config.")
    return "\n".join(lines)
