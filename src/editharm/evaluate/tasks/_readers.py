"""Reading raw task files: the few file kinds the mirror and the canonical sources use.

Each dataset format in a task module turns its raw files into rows; this module gives
them one way to list the files a spec names (a file or a folder) and to read JSON, JSONL,
CSV/TSV and Parquet records with errors that name the file, the line or record, and
the field.  Parquet needs pyarrow, which only canonical hub files require (the mirror
has none that a config uses), so it is imported on first use.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from editharm.io import DataError


def spec_paths(raw_dir: Path, spec: dict) -> list[Path]:
    """The raw files or folders of a dataset, in config order."""
    return [Path(raw_dir) / name for name in spec["files"]]


def files_under(raw_dir: Path, spec: dict, suffixes: tuple[str, ...]) -> list[Path]:
    """Every file with one of `suffixes` among the spec's raw files, folders searched recursively, sorted."""
    found: list[Path] = []
    for path in spec_paths(raw_dir, spec):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)))
        elif path.name.endswith(suffixes):
            found.append(path)
    if not found:
        names = ", ".join(str(p) for p in spec_paths(raw_dir, spec))
        raise DataError(f"no {'/'.join(suffixes)} file among the raw files {names}; check `files` for this dataset in config.")
    return found


class Where:
    """A record's location, for error messages: file plus line or record index."""

    def __init__(self, path: Path, line: int | None = None, index: int | None = None) -> None:
        self.path, self.line, self.index = path, line, index

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.path}, line {self.line}"
        if self.index is not None:
            return f"{self.path}, record {self.index} (0-based)"
        return str(self.path)

    def fail(self, problem: str) -> DataError:
        return DataError(f"{self}: {problem}. The file is not in a format this dataset's `format` reads; check the file and its sha256.")


def get(record: Any, key: str, where: Where, types: type | tuple[type, ...] = object) -> Any:
    """record[key], checked to exist and to have one of `types`."""
    if not isinstance(record, dict):
        raise where.fail(f"expected an object, got {type(record).__name__}")
    if key not in record:
        raise where.fail(f"missing field {key!r} (fields present: {', '.join(map(str, record))})")
    value = record[key]
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise where.fail(f"field {key!r} should be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def read_records(path: Path) -> Iterator[tuple[Where, dict]]:
    """Records of a .jsonl, .json (a list of objects), .parquet, .csv or .tsv file."""
    name = path.name
    if name.endswith(".jsonl"):
        yield from _jsonl(path)
    elif name.endswith(".json"):
        yield from _json(path)
    elif name.endswith(".parquet"):
        yield from _parquet(path)
    elif name.endswith((".tsv", ".csv")):
        yield from _delimited(path, "\t" if name.endswith(".tsv") else ",")
    else:
        raise DataError(f"{path}: unsupported file type; expected .jsonl, .json, .parquet, .csv or .tsv.")


def _jsonl(path: Path) -> Iterator[tuple[Where, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = Where(path, line=lineno)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise where.fail(f"not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise where.fail(f"expected a JSON object, got {type(record).__name__}")
            yield where, record


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise Where(path, line=e.lineno).fail(f"not valid JSON ({e.msg} at column {e.colno})") from e


def _json(path: Path) -> Iterator[tuple[Where, dict]]:
    data = load_json(path)
    if not isinstance(data, list):
        raise Where(path).fail(f"expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        where = Where(path, index=index)
        if not isinstance(record, dict):
            raise where.fail(f"expected a JSON object, got {type(record).__name__}")
        yield where, record


def _parquet(path: Path) -> Iterator[tuple[Where, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # only hub (canonical) files are parquet
        raise DataError(f"{path}: reading Parquet needs pyarrow; install it with `pip install pyarrow`.") from e
    for index, record in enumerate(pq.read_table(path).to_pylist()):
        yield Where(path, index=index), record


def _delimited(path: Path, delimiter: str) -> Iterator[tuple[Where, dict]]:
    # QUOTE_NONE for TSV: GLUE's tsv files contain bare quote characters inside sentences.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        for record in reader:
            where = Where(path, line=reader.line_num)
            if None in record or any(v is None for v in record.values()):
                raise where.fail(f"expected {len(reader.fieldnames or [])} columns ({', '.join(reader.fieldnames or [])})")
            yield where, record
