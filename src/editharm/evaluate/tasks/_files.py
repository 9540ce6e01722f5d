"""Locating a dataset's downloaded files, for the formats that tasks register."""

from __future__ import annotations

from pathlib import Path


def raw_file(raw_dir: str | Path, spec: dict | None, default: str) -> Path:
    """The one raw file of a dataset: the single name under `files` in its config, else `default`."""
    names = list(((spec or {}).get("files") or {}).keys())
    name = names[0] if len(names) == 1 else default
    path = Path(raw_dir) / name
    if not path.is_file():
        present = sorted(p.name for p in Path(raw_dir).iterdir()) if Path(raw_dir).is_dir() else []
        raise FileNotFoundError(f"{path} not found (files there: {present}); run the download step for this dataset")
    return path
