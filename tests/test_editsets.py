"""Editing datasets -> EditRequest rows; loading and sampling edit sets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from editharm import datasets
from editharm.editsets import convert_file, load_requests, sample_edit_set
from editharm.io import DataError
from editharm.requests import EditRequest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def test_counterfact_rome() -> None:
    conv = convert_file("counterfact_rome", FIXTURES / "counterfact_rome.json")
    assert len(conv.rows) == 3
    first = EditRequest.from_json(conv.rows[0])
    assert first.case_id == "0" and first.subject == "Danielle Darrieux"
    assert first.prompt == "The mother tongue of {} is"
    assert (first.target_new, first.target_true) == ("English", "French")
    assert len(first.paraphrases) == 2
    # Neighbourhood prompts expect the TRUE object: the neighbours share it.
    assert [p.target for p in first.locality] == ["French"] * 3
    assert first.style == "counterfact" and first.extra["relation_id"] == "P103"
    # The fourth record's prompt has no "{}" slot: skipped, with the reason.
    assert [(s.index, s.case_id) for s in conv.skipped] == [(3, "3")]
    assert "exactly one '{}'" in conv.skipped[0].reason


def test_counterfact_easyedit_rebuilds_the_template() -> None:
    conv = convert_file("counterfact_easyedit", FIXTURES / "counterfact_easyedit.json")
    assert len(conv.rows) == 3
    req = EditRequest.from_json(conv.rows[0])
    assert req.prompt == "The mother tongue of {} is" and req.filled_prompt == "The mother tongue of Danielle Darrieux is"
    assert req.paraphrases == ("Where Danielle Darrieux is from, people speak the language of",)
    assert [(p.prompt, p.target) for p in req.locality] == [("Michel Rocard is a native speaker of", "French")]
    assert len(conv.skipped) == 1 and "does not occur in prompt" in conv.skipped[0].reason


def test_zsre_mend() -> None:
    conv = convert_file("zsre_mend", FIXTURES / "zsre_mend.json")
    reqs = [EditRequest.from_json(r) for r in conv.rows]
    assert [r.case_id for r in reqs] == ["0", "1", "2"]
    first = reqs[0]
    assert first.prompt == "When was the inception of {}?" and first.style == "zsre"
    assert (first.target_new, first.target_true) == ("2006", "1998")  # alt, answers[0]
    assert first.locality[0].prompt.startswith("nq question: ") and first.locality[0].target == "The String"
    assert "portability" in first.extra
    # Targets are stored without the leading space some upstream `alt` values carry.
    assert reqs[2].target_new == "MAT-49"
    assert [s.index for s in conv.skipped] == [3]


def test_prepare_through_the_registry_and_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = {"format": "zsre_mend", "files": {"zsre_mend.json": {}}}
    out = tmp_path / "zsre.jsonl"
    with caplog.at_level(logging.WARNING, logger="editharm.editsets"):
        n = datasets.prepare(FIXTURES, spec, out)
    assert n == 3
    assert "skipped 1 of 4 records" in caplog.text and "record 3" in caplog.text
    reqs = load_requests(out)
    assert [r.subject for r in reqs] == ["IAAF Combined Events Challenge", "Ramalinaceae", "MAT-49"]
    assert all("{}" in r.prompt for r in reqs)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r["requested_rewrite"].pop("subject"), "requested_rewrite.subject"),
        (lambda r: r["requested_rewrite"]["target_new"].update(str=7), "requested_rewrite.target_new.str"),
        (lambda r: r.update(paraphrase_prompts="one prompt"), "paraphrase_prompts"),
        (lambda r: r["neighborhood_prompts"].append(None), "neighborhood_prompts[3]"),
    ],
)
def test_malformed_counterfact_record_names_file_record_and_field(tmp_path: Path, mutate, field) -> None:
    records = json.loads((FIXTURES / "counterfact_rome.json").read_text())
    mutate(records[1])
    bad = tmp_path / "counterfact.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError) as e:
        convert_file("counterfact_rome", bad)
    assert str(bad) in str(e.value) and "record 1" in str(e.value) and repr(field) in str(e.value)


def test_malformed_zsre_and_easyedit_records(tmp_path: Path) -> None:
    records = json.loads((FIXTURES / "zsre_mend.json").read_text())
    records[2]["answers"] = []
    bad = tmp_path / "zsre.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 2 \(0-based\): field 'answers'"):
        convert_file("zsre_mend", bad)
    records = json.loads((FIXTURES / "counterfact_easyedit.json").read_text())
    del records[0]["locality_ground_truth"]
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 0 \(0-based\): field 'locality_ground_truth': missing"):
        convert_file("counterfact_easyedit", bad)
    bad.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        convert_file("zsre_mend", bad)


def test_load_requests_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(convert_file("zsre_mend", FIXTURES / "zsre_mend.json").rows[0])
    path = tmp_path / "edits.jsonl"
    path.write_text(good + "\n{broken\n")
    with pytest.raises(DataError, match=rf"{path}, line 2: not valid JSON"):
        load_requests(path)
    path.write_text(good + "\n" + json.dumps({"case_id": "x", "prompt": "{}"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}, line 2: missing field 'subject'"):
        load_requests(path)


def test_sample_edit_set_is_seeded_and_prefix_stable() -> None:
    rows = [{"case_id": str(i)} for i in range(50)]
    a = sample_edit_set(rows, 10, seed=0)
    assert a == sample_edit_set(rows, 10, seed=0)
    assert a != sample_edit_set(rows, 10, seed=1)
    assert len({r["case_id"] for r in a}) == 10
    assert sample_edit_set(rows, 30, seed=0)[:10] == a  # raising max_edits keeps the first edits
    assert sample_edit_set(rows, 50, seed=0) != rows  # shuffled, not the file order
    with pytest.raises(ValueError, match=r"needs 51 requests but the dataset has only 50.*max_edits"):
        sample_edit_set(rows, 51, seed=0)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no ../shared/data mirror on this machine")
@pytest.mark.parametrize("name, count", [("counterfact", 1400), ("zsre", 1037), ("counterfact_easyedit", 10000)])
def test_real_mirror_edit_sets(tmp_path: Path, name: str, count: int) -> None:
    from editharm.sources import acquire_dataset

    spec = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"][name]
    acquire_dataset(name, spec, SHARED_DATA, tmp_path / "raw")
    assert datasets.prepare(tmp_path / "raw", spec, tmp_path / "out.jsonl") == count
    reqs = load_requests(tmp_path / "out.jsonl")
    assert len(reqs) == count and len({r.case_id for r in reqs}) == count
    assert all(r.prompt.count("{}") == 1 and r.subject in r.filled_prompt for r in reqs)
    assert all(r.target_new and r.target_true and r.paraphrases and r.locality for r in reqs)
