"""Files on disk: atomic writes, JSON/JSONL with line-numbered errors, hashes, provenance.

Every artifact of the workflow goes through these helpers so that an interrupted
job never leaves a half-written file behind that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the fix."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should be readable like any other
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, *, strict: bool = False) -> None:
    """Write `obj` as JSON. strict=True refuses NaN/Infinity (which Python writes but no other
    JSON parser reads); weight statistics may legitimately hold +inf, so it is opt-in here."""
    write_text(path, json_text(obj, path, indent=2) if strict else
               json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def json_text(obj: Any, where: str | os.PathLike, indent: int | None = None) -> str:
    """`obj` as standard JSON (no NaN/Infinity); a non-finite number raises DataError naming
    `where` and the key that holds it, so a diverged value fails loudly instead of being logged."""
    try:
        return json.dumps(obj, indent=indent, sort_keys=True, default=_json_default, allow_nan=False) + (
            "\n" if indent is not None else "")
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise
        raise DataError(
            f"{where}: refusing to write the non-finite number at {nonfinite_key(obj) or '(a converted value)'}: "
            "NaN/Infinity is not valid JSON, and in a result it means a computation diverged. "
            "Find why it is not finite (e.g. a learning rate too large) instead of writing it."
        ) from e


def nonfinite_key(obj: Any, prefix: str = "") -> str | None:
    """Path (e.g. `rows[3].loss`) to the first NaN/Inf inside nested dicts, lists, tensors and arrays."""
    if hasattr(obj, "tolist") and not isinstance(obj, (list, tuple, dict)):  # torch/numpy values
        obj = obj.tolist()
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (prefix or "(top level)")
    if isinstance(obj, dict):
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = nonfinite_key(value, key)
        if found:
            return found
    return None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """One JSON object per line; every line is standard JSON (a NaN/Inf raises DataError)."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json_text(row, f"{path}, line {n + 1}") + "\n")
            n += 1
    return n


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """("<file>, line <n>", row) for each object of a JSONL file, streamed (a corpus may not fit
    in memory). Blank lines are skipped; a malformed line, a line that is not an object, or a
    NaN/Infinity (not JSON; `write_jsonl` never writes one, so its presence means a damaged or
    foreign file) raises DataError naming file and line when the reader reaches it."""
    path = Path(path)
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line, parse_constant=_refuse_constant)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where}: not valid JSON ({e.msg} at column {e.colno}). "
                    "Fix or delete that line, or re-run the prepare step to regenerate the file."
                ) from e
            except _NonFinite as e:
                raise DataError(
                    f"{where}: {e.args[0]} is not a JSON number (NaN/Infinity are not standard JSON, and this "
                    "workflow never writes them). Fix that line, or re-run the step that wrote the file."
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}. "
                                "Fix that line, or re-run the step that wrote the file.")
            yield where, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every object of a JSONL file (see `iter_jsonl` for what is refused)."""
    return [row for _, row in iter_jsonl(path)]


class _NonFinite(Exception):
    """Raised while parsing a line that holds NaN/Infinity; turned into a DataError naming the line."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in ("editharm", "torch", "transformers", "snakemake", "numpy", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(**extra: Any) -> dict[str, Any]:
    """What every artifact records about how it was made: versions, host, time, plus `extra`."""
    return {
        "versions": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "created_unix": time.time(),
        **extra,
    }
