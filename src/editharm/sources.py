"""Acquire the raw files of a dataset: the local mirror first, then the canonical source.

A dataset spec (config.yaml, `datasets:`) lists its files:

    files:
      <raw_name>:                      # name of the file (or folder) in the raw directory
        mirror: counterfact/x.json     # path inside the mirror directory (optional)
        sha256: <hex>                  # of the mirror copy; of its SHA256SUMS for a folder
        url: https://...               # canonical source, or
        hub: {repo_id, filename, revision, repo_type}   # (repo_type defaults to dataset)
        url_sha256: <hex>              # of the canonical file, when it is not the mirror's file
        kind: file | directory         # optional; a folder mirror is recognised without it
        archive_subdir: a/b            # folder inside the archive, for a directory `url`

Why this order: the mirror is what these machines have and what every result so far
was computed from; the canonical source keeps the project usable without it.  Every
byte that enters the raw directory has been hashed against config, so a prepared
dataset can only differ between machines if config differs.

A folder (MuTual's 886 dev files, the Wikipedia article files) is verified through
the SHA256SUMS file inside it: `sha256` pins SHA256SUMS, SHA256SUMS pins every file.
Only the listed files and SHA256SUMS itself are copied, so nothing unverified enters.
A folder's canonical source is an archive (`url` ending in .zip, .tar, .tar.gz, .tgz)
checked by `url_sha256`; `archive_subdir` names the folder inside it.

Everything is written to a temporary name next to its destination and moved into
place with os.replace, so an interrupted job leaves no half-copied file behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from editharm.io import DataError, atomic_path, sha256_file

SUMS_NAME = "SHA256SUMS"
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class ChecksumError(ValueError):
    """A file's sha256 differs from the one recorded in config."""


class SourceError(RuntimeError):
    """No source could provide a file (not in the mirror and the download failed)."""


# --------------------------------------------------------------------------- public API


def acquire_dataset(name: str, spec: dict, mirror_dir: str | os.PathLike | None, out_dir: str | os.PathLike) -> dict:
    """Acquire every file of dataset `name` into `out_dir`; return the manifest.

    The manifest says, per raw file, where it came from (`source`: mirror, url or hub;
    `location`), its sha256 and size, and which config field it was checked against.
    """
    files = spec.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"dataset {name!r}: `files` must map raw file names to their sources; got {files!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"dataset": name, "format": spec.get("format"), "files": {}}
    for raw_name, fspec in files.items():
        _check_raw_name(name, raw_name)
        manifest["files"][raw_name] = acquire_file(
            raw_name, fspec, mirror_dir, out_dir / raw_name, label=f"dataset {name!r}, file {raw_name!r}"
        )
    return manifest


def acquire_file(
    raw_name: str,
    fspec: dict,
    mirror_dir: str | os.PathLike | None,
    dest: str | os.PathLike,
    *,
    label: str | None = None,
) -> dict:
    """Acquire one file (or folder) entry of a dataset spec to `dest`; return its manifest entry."""
    label = label or f"file {raw_name!r}"
    dest = Path(dest)
    _check_spec(label, fspec)
    mirror_copy = _mirror_copy(fspec, mirror_dir)
    if mirror_copy is not None:
        if mirror_copy.is_dir():
            return _copy_mirror_dir(label, mirror_copy, fspec["sha256"], dest)
        return _copy_mirror_file(label, mirror_copy, fspec["sha256"], dest)
    where = _mirror_description(fspec, mirror_dir)
    if fspec.get("kind") == "directory":
        return _fetch_directory(label, fspec, where, dest)
    if "url" in fspec:
        return _fetch_url(label, fspec, where, dest)
    if "hub" in fspec:
        return _fetch_hub(label, fspec, where, dest)
    raise SourceError(
        f"{label}: not in mirror {where}, and config gives no canonical source; "
        "put the file in the mirror, or add `url` or `hub` (with its sha256) to this file's entry in config."
    )


def parse_sha256sums(path: str | os.PathLike) -> dict[str, str]:
    """Read a `sha256sum` listing (`<hex>  ./relative/path` per line) -> {relative path: hex}."""
    path = Path(path)
    listing: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition(" ")
        rel = rel.lstrip(" *")  # "  name" (text mode) or " *name" (binary mode)
        if not sep or len(digest) != 64 or not rel:
            raise DataError(f"{path}, line {lineno}: expected '<sha256>  <path>' as sha256sum writes it, got {line!r}.")
        listing[_safe_relpath(path, lineno, rel)] = digest.lower()
    if not listing:
        raise DataError(f"{path}: lists no files; regenerate it with `sha256sum` over the folder's files.")
    return listing


def verify_directory(directory: str | os.PathLike, sums_sha256: str | None, label: str | None = None) -> dict[str, str]:
    """Check a folder against its SHA256SUMS (and SHA256SUMS against `sums_sha256`); return the listing."""
    directory = Path(directory)
    label = label or str(directory)
    sums = directory / SUMS_NAME
    if not sums.is_file():
        raise ChecksumError(f"{label}: folder {directory} has no {SUMS_NAME}, so its files cannot be verified.")
    if sums_sha256 is not None:
        _compare(label, sums, sums_sha256, sha256_file(sums), "sha256", _fix_mirror(sums))
    listing = parse_sha256sums(sums)
    for rel, expected in listing.items():
        f = directory / rel
        if not f.is_file():
            raise ChecksumError(f"{label}: {f} is listed in {sums} but missing; restore it from the canonical source.")
        _compare(label, f, expected, sha256_file(f), f"{SUMS_NAME} entry", _fix_mirror(f))
    return listing


# --------------------------------------------------------------------------- the mirror


def _mirror_copy(fspec: dict, mirror_dir: str | os.PathLike | None) -> Path | None:
    if not mirror_dir or "mirror" not in fspec:
        return None
    root = Path(mirror_dir)
    if not root.is_dir():
        return None
    path = root / fspec["mirror"]
    return path if path.exists() else None


def _mirror_description(fspec: dict, mirror_dir: str | os.PathLike | None) -> str:
    if "mirror" not in fspec:
        return "(this file has no `mirror` entry in config)"
    if not mirror_dir:
        return (f"(no mirror folder in use: `mirror_dir` is unset, or names a folder that does not exist, which the "
                f"run's start reports; would be <mirror_dir>/{fspec['mirror']})")
    if not Path(mirror_dir).is_dir():
        return (f"{Path(mirror_dir) / fspec['mirror']} (the mirror folder {mirror_dir} does not exist: "
                "fix `mirror_dir` in config if it is a typo)")
    return str(Path(mirror_dir) / fspec["mirror"])


def _copy_mirror_file(label: str, src: Path, expected: str, dest: Path) -> dict:
    with atomic_path(dest) as tmp:
        with open(src, "rb") as f:
            actual, size = _copy_hashing(f, tmp)
        _compare(label, src, expected, actual, "sha256", _fix_mirror(src))
    return _entry("mirror", src, "file", actual, size, "sha256")


def _copy_mirror_dir(label: str, src: Path, sums_sha256: str, dest: Path) -> dict:
    sums = src / SUMS_NAME
    if not sums.is_file():
        raise ChecksumError(
            f"{label}: mirror folder {src} has no {SUMS_NAME}; for a folder, config's sha256 is that of its "
            f"{SUMS_NAME}. Create it with `cd {src} && find . -type f ! -name {SUMS_NAME} | sort | xargs sha256sum > {SUMS_NAME}` "
            "and put its sha256 in config."
        )
    tmp = _temp_dir_beside(dest)
    try:
        with open(sums, "rb") as f:
            actual, size = _copy_hashing(f, tmp / SUMS_NAME)
        _compare(label, sums, sums_sha256, actual, "sha256", _fix_mirror(sums))
        listing = parse_sha256sums(tmp / SUMS_NAME)
        for rel, expected in listing.items():
            src_file = src / rel
            if not src_file.is_file():
                raise ChecksumError(f"{label}: {src_file} is listed in {sums} but missing; restore it from the canonical source.")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(src_file, "rb") as f:
                file_sha, file_size = _copy_hashing(f, tmp / rel)
            _compare(label, src_file, expected, file_sha, f"{SUMS_NAME} entry", _fix_mirror(src_file))
            size += file_size
        _replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _entry("mirror", src, "directory", actual, size, "sha256", files=len(listing))


# --------------------------------------------------------------------------- canonical sources


def _fetch_url(label: str, fspec: dict, where: str, dest: Path) -> dict:
    url = fspec["url"]
    expected, field = _canonical_hash(fspec)
    with atomic_path(dest) as tmp:
        actual, size = _download(label, url, tmp, where)
        _compare(label, url, expected, actual, field, _fix_canonical(field))
    return _entry("url", url, "file", actual, size, field)


def _fetch_hub(label: str, fspec: dict, where: str, dest: Path) -> dict:
    hub = fspec["hub"]
    repo_type = hub.get("repo_type", "dataset")
    revision = hub.get("revision")
    location = f"hf://{repo_type}s/{hub['repo_id']}/{hub['filename']}" + (f"@{revision}" if revision else "")
    try:
        from huggingface_hub import hf_hub_download

        cached = hf_hub_download(repo_id=hub["repo_id"], filename=hub["filename"], revision=revision, repo_type=repo_type)
    except Exception as e:  # the hub client raises many types (HTTP, offline, missing repo); all mean "not obtained"
        raise SourceError(_offline_message(label, where, location, e)) from e
    expected, field = _canonical_hash(fspec)
    with atomic_path(dest) as tmp:
        with open(cached, "rb") as f:
            actual, size = _copy_hashing(f, tmp)
        _compare(label, location, expected, actual, field, _fix_canonical(field))
    return _entry("hub", location, "file", actual, size, field)


def _fetch_directory(label: str, fspec: dict, where: str, dest: Path) -> dict:
    url = fspec.get("url")
    if not url or not url.lower().endswith(_ARCHIVE_SUFFIXES):
        raise SourceError(
            f"{label}: not in mirror {where}; a folder's canonical source must be `url` to an archive "
            f"({', '.join(_ARCHIVE_SUFFIXES)}) with `url_sha256`, and config gives {url!r}. "
            "Put the folder in the mirror, or give an archive url."
        )
    if "url_sha256" not in fspec:
        raise ValueError(
            f"{label}: a folder's archive needs `url_sha256` (its `sha256` is that of the folder's {SUMS_NAME}); "
            "add the archive's sha256 to config."
        )
    tmp = _temp_dir_beside(dest)
    try:
        archive = tmp / ("archive" + _archive_suffix(url))
        actual, size = _download(label, url, archive, where)
        _compare(label, url, fspec["url_sha256"], actual, "url_sha256", _fix_canonical("url_sha256"))
        extracted = tmp / "extracted"
        _extract(label, archive, extracted)
        folder = extracted / fspec.get("archive_subdir", "")
        if not folder.is_dir():
            inside = sorted(p.name for p in extracted.iterdir())[:10]
            raise SourceError(
                f"{label}: archive {url} has no folder {fspec.get('archive_subdir')!r}; its top level holds {inside}. "
                "Fix `archive_subdir` in config."
            )
        n_files = sum(1 for p in folder.rglob("*") if p.is_file())
        if (folder / SUMS_NAME).is_file():
            # The canonical archive carries the same listing as the mirror: check it as strictly.
            n_files = len(verify_directory(folder, fspec["sha256"], label))
        _replace(folder, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _entry("url", url, "directory", actual, size, "url_sha256", files=n_files)


def _canonical_hash(fspec: dict) -> tuple[str, str]:
    # url_sha256 exists because a canonical file may be a different release than the
    # mirror's (CounterFact: the full 21,919 cases vs the mirrored 1,400-case subset).
    if "url_sha256" in fspec:
        return fspec["url_sha256"], "url_sha256"
    return fspec["sha256"], "sha256"


def _download(label: str, url: str, tmp: Path, where: str) -> tuple[str, int]:
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "editharm"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return _copy_hashing(response, tmp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SourceError(_offline_message(label, where, url, e)) from e


def _offline_message(label: str, where: str, location: str, error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return (
        f"{label}: not in mirror {where}, and downloading {location} failed: {reason}; "
        "put the file in the mirror or go online."
    )


def _extract(label: str, archive: Path, into: Path) -> None:
    into.mkdir()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                _safe_relpath(archive, None, name)
            z.extractall(into)
        return
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            _safe_relpath(archive, None, member.name)
            if member.issym() or member.islnk():
                raise DataError(f"{label}: archive {archive} contains a link ({member.name}); refusing to extract it.")
        if hasattr(tarfile, "data_filter"):
            t.extractall(into, filter="data")
        else:  # Python < 3.11.4; members were checked above
            t.extractall(into)


def _archive_suffix(url: str) -> str:
    return next(s for s in sorted(_ARCHIVE_SUFFIXES, key=len, reverse=True) if url.lower().endswith(s))


# --------------------------------------------------------------------------- helpers


def _check_spec(label: str, fspec: dict) -> None:
    if not isinstance(fspec, dict):
        raise ValueError(f"{label}: expected a mapping with mirror/sha256/url/hub, got {fspec!r}")
    if "sha256" not in fspec:
        raise ValueError(f"{label}: missing `sha256`; add the file's sha256 (`sha256sum <file>`) to its entry in config.")
    if fspec.get("kind", "file") not in ("file", "directory"):
        raise ValueError(f"{label}: `kind` must be 'file' or 'directory', got {fspec['kind']!r}")
    if not any(k in fspec for k in ("mirror", "url", "hub")):
        raise ValueError(f"{label}: give at least one source: `mirror`, `url` or `hub`.")


def _check_raw_name(name: str, raw_name: str) -> None:
    p = PurePosixPath(raw_name)
    if p.is_absolute() or ".." in p.parts or not raw_name or "/" in raw_name or "\\" in raw_name:
        raise ValueError(f"dataset {name!r}: raw file name {raw_name!r} must be a plain name (no folders, no '..').")


def _safe_relpath(where: Path, lineno: int | None, rel: str) -> str:
    p = PurePosixPath(rel)
    parts = [part for part in p.parts if part != "."]
    if p.is_absolute() or ".." in parts or not parts:
        at = f", line {lineno}" if lineno else ""
        raise DataError(f"{where}{at}: path {rel!r} leaves its folder; only relative paths inside it are allowed.")
    return str(PurePosixPath(*parts))


def _copy_hashing(src: BinaryIO, dest: Path) -> tuple[str, int]:
    """Copy a stream to `dest`, hashing in the same pass (one read of large files)."""
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        while block := src.read(_CHUNK):
            h.update(block)
            out.write(block)
            size += len(block)
    return h.hexdigest(), size


def _compare(label: str, what: object, expected: str, actual: str, field: str, fix: str) -> None:
    if actual != expected.lower():
        raise ChecksumError(f"{label}: sha256 mismatch for {what}: expected {expected} (config `{field}`), got {actual}. {fix}")


def _fix_mirror(path: Path) -> str:
    return (
        f"The mirror copy is not the recorded file: replace {path} with the original, or remove it so that "
        "the canonical source is used; if the new content is intended, put the new hash in config."
    )


def _fix_canonical(field: str) -> str:
    return (
        "The canonical source no longer serves the recorded file: check the url/revision in config (pin a commit), "
        f"or, after checking the new file, put its hash in `{field}`."
    )


def _entry(source: str, location: object, kind: str, sha: str, size: int, checked: str, **more: object) -> dict:
    return {"source": source, "location": str(location), "kind": kind, "sha256": sha, "bytes": size,
            "checked_against": checked, **more}


def _temp_dir_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))


def _replace(src: Path, dest: Path) -> None:
    """Move folder `src` to `dest`, replacing whatever is there (os.replace cannot replace a full folder)."""
    if dest.is_dir() and not dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / "x")
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(src, dest)
