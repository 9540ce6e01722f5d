"""The one JSONL reader (io.iter_jsonl / read_jsonl) that edit sets, corpora and results share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editharm.io import DataError, iter_jsonl, read_jsonl, write_jsonl


def test_round_trip_skips_blank_lines_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"a": 1, "b": [0.5, "x"]}, {"a": 2, "b": []}]
    write_jsonl(path, rows)
    assert read_jsonl(path) == rows
    # A BOM (editors on Windows write one) and blank lines between rows change nothing,
    # but the line numbers named are those of the file.
    path.write_text("\ufeff" + json.dumps(rows[0]) + "\n\n   \n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    assert list(iter_jsonl(path)) == [(f"{path}, line 1", rows[0]), (f"{path}, line 4", rows[1])]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_with_file_and_line(tmp_path: Path, constant: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"loss": 1.0}\n\n{"loss": ' + constant + "}\n")
    with pytest.raises(DataError, match=rf"{path}, line 3: {constant} is not a JSON number"):
        read_jsonl(path)
    # write_jsonl refuses to write what read_jsonl refuses to read.
    with pytest.raises(DataError, match="non-finite"):
        write_jsonl(tmp_path / "out.jsonl", [{"loss": float(constant.replace("Infinity", "inf"))}])


def test_streams_rows_before_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}\n[1, 2]\n{broken\n')
    rows = iter_jsonl(path)
    assert next(rows) == (f"{path}, line 1", {"i": 0})
    with pytest.raises(DataError, match=rf"{path}, line 2: expected a JSON object, got list"):
        next(rows)
    path.write_text('{"i": 0}\n{broken\n')
    with pytest.raises(DataError, match=rf"{path}, line 2: not valid JSON \(.* at column 2\)"):
        read_jsonl(path)
