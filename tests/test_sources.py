"""Acquiring dataset files: mirror first (checked by sha256), then the canonical source."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml

from editharm import sources
from editharm.sources import ChecksumError, SourceError, acquire_dataset, acquire_file

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_dir_with_sums(folder: Path, files: dict[str, bytes]) -> str:
    """A folder with `files` and a SHA256SUMS listing them; returns the sha256 of SHA256SUMS."""
    folder.mkdir(parents=True)
    lines = []
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        lines.append(f"{sha(data)}  ./{name}\n")
    sums = "".join(lines).encode()
    (folder / "SHA256SUMS").write_bytes(sums)
    return sha(sums)


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "a.json").write_bytes(b'[{"x": 1}]\n')
    return root


def test_mirror_copy_is_verified_and_copied(mirror: Path, tmp_path: Path) -> None:
    data = (mirror / "ds" / "a.json").read_bytes()
    spec = {"format": "f", "files": {"a.json": {"mirror": "ds/a.json", "sha256": sha(data), "url": "http://127.0.0.1:9/never"}}}
    manifest = acquire_dataset("toy", spec, str(mirror), tmp_path / "raw")
    assert (tmp_path / "raw" / "a.json").read_bytes() == data
    entry = manifest["files"]["a.json"]
    assert entry["source"] == "mirror" and entry["sha256"] == sha(data) and entry["bytes"] == len(data)
    assert entry["location"] == str(mirror / "ds" / "a.json")


def test_mirror_checksum_mismatch_names_file_both_hashes_and_fix(mirror: Path, tmp_path: Path) -> None:
    wrong = "0" * 64
    spec = {"format": "f", "files": {"a.json": {"mirror": "ds/a.json", "sha256": wrong}}}
    with pytest.raises(ChecksumError) as e:
        acquire_dataset("toy", spec, mirror, tmp_path / "raw")
    msg = str(e.value)
    actual = sha((mirror / "ds" / "a.json").read_bytes())
    assert str(mirror / "ds" / "a.json") in msg and wrong in msg and actual in msg
    assert "'a.json'" in msg and "replace" in msg and "config" in msg
    assert list((tmp_path / "raw").iterdir()) == []  # no partial or temporary file left behind


def test_missing_mirror_copy_falls_back_to_url(mirror: Path, tmp_path: Path) -> None:
    canonical = tmp_path / "canonical.json"
    canonical.write_bytes(b'[{"x": 2}]\n')
    fspec = {"mirror": "ds/absent.json", "sha256": "1" * 64, "url": canonical.as_uri(), "url_sha256": sha(canonical.read_bytes())}
    entry = acquire_file("b.json", fspec, mirror, tmp_path / "raw" / "b.json")
    assert (tmp_path / "raw" / "b.json").read_bytes() == canonical.read_bytes()
    assert entry["source"] == "url" and entry["checked_against"] == "url_sha256"
    # No mirror configured at all: the same canonical source, checked against sha256.
    fspec = {"mirror": "ds/a.json", "sha256": sha(canonical.read_bytes()), "url": canonical.as_uri()}
    assert acquire_file("b.json", fspec, None, tmp_path / "raw2" / "b.json")["checked_against"] == "sha256"


def test_url_checksum_mismatch(tmp_path: Path) -> None:
    canonical = tmp_path / "canonical.json"
    canonical.write_bytes(b"changed upstream")
    fspec = {"sha256": "2" * 64, "url": canonical.as_uri()}
    with pytest.raises(ChecksumError, match="2{64}.*" + sha(b"changed upstream")):
        acquire_file("c.json", fspec, None, tmp_path / "raw" / "c.json")
    assert not (tmp_path / "raw" / "c.json").exists()


def test_offline_failure_message(mirror: Path, tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/data.json"  # nothing listens on the discard port: fails at once
    fspec = {"mirror": "ds/absent.json", "sha256": "3" * 64, "url": url}
    with pytest.raises(SourceError) as e:
        acquire_dataset("toy", {"format": "f", "files": {"d.json": fspec}}, mirror, tmp_path / "raw")
    msg = str(e.value)
    assert f"not in mirror {mirror / 'ds' / 'absent.json'}" in msg
    assert f"downloading {url} failed" in msg and "put the file in the mirror or go online" in msg


def test_directory_mirror_checked_against_sha256sums(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    sums_sha = write_dir_with_sums(mirror / "mutual" / "dev", {"dev_1.txt": b"one", "dev_2.txt": b"two"})
    (mirror / "mutual" / "dev" / "unlisted.txt").write_bytes(b"not verified, not copied")
    spec = {"format": "f", "files": {"dev": {"mirror": "mutual/dev", "sha256": sums_sha}}}
    manifest = acquire_dataset("mutual", spec, mirror, tmp_path / "raw")
    out = tmp_path / "raw" / "dev"
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "dev_1.txt", "dev_2.txt"]
    entry = manifest["files"]["dev"]
    assert entry["kind"] == "directory" and entry["files"] == 2 and entry["sha256"] == sums_sha

    (mirror / "mutual" / "dev" / "dev_2.txt").write_bytes(b"tampered")
    with pytest.raises(ChecksumError) as e:
        acquire_dataset("mutual", spec, mirror, tmp_path / "raw")
    assert str(mirror / "mutual" / "dev" / "dev_2.txt") in str(e.value) and sha(b"two") in str(e.value)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["dev"]  # old copy intact, no temp dirs


def test_directory_canonical_archive(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    sums_sha = write_dir_with_sums(staging / "MuTual-abc" / "data" / "dev", {"dev_1.txt": b"one"})
    archive = tmp_path / "repo.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in staging.rglob("*"):
            z.write(p, p.relative_to(staging).as_posix())
    fspec = {"mirror": "mutual/dev", "sha256": sums_sha, "kind": "directory", "url": archive.as_uri(),
             "url_sha256": sha(archive.read_bytes()), "archive_subdir": "MuTual-abc/data/dev"}
    entry = acquire_file("dev", fspec, tmp_path / "no-mirror", tmp_path / "raw" / "dev")
    assert (tmp_path / "raw" / "dev" / "dev_1.txt").read_bytes() == b"one"
    assert entry["source"] == "url" and entry["files"] == 1


def test_hub_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    cached = tmp_path / "hub-cache-file"
    cached.write_bytes(b"from the hub")
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    fspec = {"sha256": sha(b"from the hub"), "hub": {"repo_id": "org/ds", "filename": "x.json", "revision": "abc"}}
    entry = acquire_file("x.json", fspec, None, tmp_path / "raw" / "x.json")
    assert calls == [{"repo_id": "org/ds", "filename": "x.json", "revision": "abc", "repo_type": "dataset"}]
    assert entry["source"] == "hub" and (tmp_path / "raw" / "x.json").read_bytes() == b"from the hub"

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(SourceError, match=r"downloading hf://datasets/org/ds/x.json@abc failed: no network"):
        acquire_file("x.json", fspec, None, tmp_path / "raw" / "x.json")


def test_spec_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing `sha256`"):
        acquire_file("a", {"url": "file:///x"}, None, tmp_path / "a")
    with pytest.raises(SourceError, match="no canonical source"):
        acquire_file("a", {"mirror": "x/a", "sha256": "4" * 64}, tmp_path, tmp_path / "a")
    with pytest.raises(ValueError, match="plain name"):
        acquire_dataset("toy", {"files": {"../a": {"mirror": "a", "sha256": "5" * 64}}}, None, tmp_path)


def test_sha256sums_paths_must_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "SHA256SUMS").write_text(f"{'6' * 64}  ../escape\n")
    with pytest.raises(Exception, match="leaves its folder"):
        sources.parse_sha256sums(tmp_path / "SHA256SUMS")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no ../shared/data mirror on this machine")
def test_config_datasets_match_the_real_mirror(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    mirrored = {n: s for n, s in config["datasets"].items() if all("mirror" in f for f in s["files"].values())}
    # counterfact_full is canonical-only (not mirrored); fetching it would need the network
    assert "counterfact" in mirrored and "zsre" in mirrored
    for name, spec in mirrored.items():
        manifest = acquire_dataset(name, spec, SHARED_DATA, tmp_path / name)
        assert {e["source"] for e in manifest["files"].values()} == {"mirror"}, name
