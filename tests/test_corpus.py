"""Text corpora for covariance statistics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from editharm import corpus, datasets
from editharm.corpus import detokenise, iter_texts
from editharm.io import DataError
from editharm.sources import acquire_dataset

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.mark.parametrize(
    "raw, clean",
    [
        (" M @-@ 82 is a state trunkline ", "M-82 is a state trunkline"),
        ("weigh 0 @.@ 7 kg , or 1 @,@ 500 g .", "weigh 0.7 kg, or 1,500 g."),
        ("( 24 in ) ; the lobster 's claws : red !", "(24 in); the lobster's claws: red!"),
        ("a <unk> lobster , \" cutter \"", "a <unk> lobster, \" cutter \""),  # <unk> and quotes kept
    ],
)
def test_detokenise(raw: str, clean: str) -> None:
    assert detokenise(raw) == clean


def test_wikitext_tokens_splits_articles_and_cleans_text(tmp_path: Path) -> None:
    spec = {"format": "wikitext_tokens", "files": {"wikitext_tokens.txt": {}}}
    out = tmp_path / "corpus.jsonl"
    assert datasets.prepare(FIXTURES, spec, out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["title"] for r in rows] == ["Homarus gammarus", "M-82 (Michigan highway)"]
    assert [r["id"] for r in rows] == ["wikitext_tokens.txt#0", "wikitext_tokens.txt#1"]
    first = rows[0]["text"]
    assert first.startswith("Homarus gammarus, known as the European lobster")
    assert "\n\nDescription\n\n" in first and " = " not in first
    assert "0.7 – 2.2 kg (1.5 – 4.9 lb)." in first and "@" not in first and "<unk>" in first
    assert list(iter_texts(out)) == [r["text"] for r in rows]


def test_wikitext_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("just some text\n = Late Title = \n body\n")
    with pytest.raises(DataError, match="before the first ' = Title = ' heading"):
        list(corpus.wikitext_articles(bad))


def test_wikipedia_articles_folder_via_mirror(tmp_path: Path) -> None:
    # The fixture folder plays the mirror: acquired through SHA256SUMS, then prepared.
    sums_sha = hashlib.sha256((FIXTURES / "wikipedia_articles" / "SHA256SUMS").read_bytes()).hexdigest()
    spec = {"format": "wikipedia_articles", "files": {"text_files": {"mirror": "wikipedia_articles", "sha256": sums_sha}}}
    acquire_dataset("wiki", spec, FIXTURES, tmp_path / "raw")
    out = tmp_path / "wiki.jsonl"
    assert datasets.prepare(tmp_path / "raw", spec, out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["title"]) for r in rows] == [
        ("text_files/AA_wiki_00_10", "ACADEMY AWARDS"),
        ("text_files/AC_wiki_40_11", "FIFA WORLD CUP TROPHY"),
    ]
    awards, trophy = rows[0]["text"], rows[1]["text"]
    assert awards.startswith("The Academy Awards, also known as the Oscars")
    assert "\n\nTrademark\n\nThe term \"Oscar\"" in awards
    assert "Section::::" not in awards + trophy
    # Upper-case heading lines are gone (duplicates of Section:::: or of emptied sections).
    assert not any(b == b.upper() and b != b.lower() for b in (awards + "\n\n" + trophy).split("\n\n"))
    assert "* List of film awards" in awards and "\n\nJules Rimet Trophy\n\n" in trophy


def test_iter_texts_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n\n{"id": "b"}\n')
    texts = iter_texts(path)
    assert next(texts) == "fine"
    with pytest.raises(DataError, match=rf"{path}, line 3: expected an object with a string field 'text'"):
        next(texts)
    path.write_text("not json\n")
    with pytest.raises(DataError, match=rf"{path}, line 1: not valid JSON"):
        list(iter_texts(path))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no ../shared/data mirror on this machine")
def test_real_wikitext2(tmp_path: Path) -> None:
    spec = {"format": "wikitext_tokens", "files": {"valid.txt": {}, "test.txt": {}}}
    out = tmp_path / "wikitext2.jsonl"
    # 60 articles in valid, 62 in test (one " = Title = " heading each).
    assert datasets.prepare(SHARED_DATA / "wikitext2_tokenized", spec, out) == 122
    texts = list(iter_texts(out))
    assert not any(" @-@ " in t or " @,@ " in t or " @.@ " in t for t in texts)
    assert sum(len(t.split()) for t in texts) > 380_000
