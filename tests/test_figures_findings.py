"""The findings table: each figure measures what its data show against what the paper found.

Synthetic tidy tables whose scores move by known amounts with the number of edits: the
findings must quote the measured change and decide agreement by their stated criterion.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from editharm import figures as F
from editharm.figures.data import _paper_tasks
from editharm.figures.findings import score_changes
from editharm.figures.gu2024 import PAPER_FINDINGS as GU_FINDINGS
from editharm.figures.li2024 import PAPER_FINDINGS as LI_FINDINGS

COLUMNS = ["model", "dataset", "method", "regulariser", "seed", "edits", "task", "metric", "value"]
EDITS = (0, 10, 100)


def _downstream(slopes: dict, tasks=(("sst2", "accuracy"), ("gsm8k", "solve_rate")), model="tiny",
                edits=EDITS, seeds=(0, 1), base=0.6) -> pd.DataFrame:
    """Rows whose score is base + slope * edits (slope per (method, regulariser) or per method)."""
    rows = []
    for key, slope in slopes.items():
        method, reg = key if isinstance(key, tuple) else (key, "none")
        for seed in seeds:
            for n in edits:
                for task, metric in tasks:
                    rows.append([model, "zsre", method, reg, seed, n, task, metric, base + slope * n])
    return pd.DataFrame(rows, columns=COLUMNS)


def _tables(downstream: pd.DataFrame, editing: pd.DataFrame | None = None) -> dict:
    empty = pd.DataFrame(columns=COLUMNS)
    return {"downstream": downstream, "editing": empty if editing is None else editing, "weight_stats": empty}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


LI_TASKS = (("mmlu", "accuracy"), ("truthfulqa", "mc1"), ("toxigen", "accuracy"))
HARM_FIGURES = {"gu_fig3": (("sst2", "accuracy"), ("gsm8k", "solve_rate")), "li_fig2": LI_TASKS,
                "li_fig5": LI_TASKS, "li_fig6": LI_TASKS}


@pytest.mark.parametrize("name", sorted(HARM_FIGURES))
def test_harm_growing_with_edits_agrees_and_quotes_the_change(name):
    # ROME loses 0.2 (20 points) over 100 edits, MEMIT 0.1.
    ds = _downstream({"rome": -0.002, "memit": -0.001}, tasks=HARM_FIGURES[name])
    result = F.FIGURES[name][0](_tables(ds), {})
    assert result.status == "ok", result.missing
    assert result.agrees is True, result.finding
    if name == "li_fig5":  # percent of the unedited score: 0.4 / 0.6 = 66.7%, a change of -33.3
        assert "ROME: -33.3 after 100 edits" in result.finding and "MEMIT: -16.7" in result.finding
    else:
        assert "ROME: -20.0 after 100 edits" in result.finding and "MEMIT: -10.0" in result.finding
        assert "Mean over the 2 groups: -15.0" in result.finding
    assert "Criterion" in result.finding


@pytest.mark.parametrize("name", sorted(HARM_FIGURES))
@pytest.mark.parametrize("slope", [0.0, 0.001])
def test_flat_or_improving_scores_do_not_agree(name, slope):
    ds = _downstream({"rome": slope, "memit": slope}, tasks=HARM_FIGURES[name])
    result = F.FIGURES[name][0](_tables(ds), {})
    assert result.status == "ok" and result.agrees is False, result.finding


@pytest.mark.parametrize("name", sorted(HARM_FIGURES))
def test_a_collapsed_model_counts_as_harm(name):
    ds = _downstream({"rome": 0.0, "memit": 0.0}, tasks=HARM_FIGURES[name])
    flat = F.FIGURES[name][0](_tables(ds), {})
    assert flat.agrees is False and "collapsed" not in flat.finding
    # ROME's model gave no valid output at 100 edits: the table has a 'failed' row and no scores there.
    ds = ds[~((ds.method == "rome") & (ds.edits == 100))]
    failed = pd.DataFrame([["tiny", "zsre", "rome", "none", 0, 100, HARM_FIGURES[name][0][0], "failed", 1.0]],
                          columns=COLUMNS)
    result = F.FIGURES[name][0](_tables(pd.concat([ds, failed], ignore_index=True)), {})
    assert result.agrees is True and "collapsed" in result.finding and "ROME, from 100 edits" in result.finding
    assert "ROME: +0.0 after 10 edits" in result.finding  # the scores before the collapse


def test_a_small_drop_within_the_threshold_is_not_harm():
    ds = _downstream({"rome": -0.00005})  # half a point over 100 edits
    assert F.gu_fig3(_tables(ds), {}).agrees is False


def test_perplexity_is_sign_flipped_so_that_negative_means_harm():
    ds = _downstream({"rome": 0.2}, tasks=(("wikitext", "word_perplexity"),), base=20.0)  # 20 -> 40: doubled
    ds = pd.concat([ds, _downstream({"rome": -0.002}, tasks=(("sst2", "accuracy"),))])
    changes = score_changes(ds, ["model", "dataset", "method"]).set_index("task")
    assert changes.loc["wikitext", "change"] == pytest.approx(-50.0)  # the inverse perplexity halves
    assert changes.loc["sst2", "change"] == pytest.approx(-20.0)
    assert (changes.edits == 100).all()
    # A falling perplexity is an improvement.
    better = _downstream({"rome": -0.1}, tasks=(("wikitext", "word_perplexity"),), base=20.0)  # 20 -> 10
    assert score_changes(better, ["method"]).change.iloc[0] == pytest.approx(100.0)
    # An exploding perplexity is bounded like an accuracy falling to 0.
    exploded = _downstream({"rome": 1e6}, tasks=(("wikitext", "word_perplexity"),), base=20.0)
    assert -100.0 < score_changes(exploded, ["method"]).change.iloc[0] < -99.9


def test_a_group_without_an_unedited_score_has_no_change():
    ds = _downstream({"rome": -0.002}, edits=(10, 100))
    assert score_changes(ds, ["method"]).empty
    result = F.gu_fig3(_tables(ds), {})
    assert result.agrees is None and "unedited score" in result.finding


def test_batch_figures_measure_from_the_unedited_model():
    config = {"methods": {"memit_b10": {"module": "editharm.methods.memit", "batch_size": 10},
                          "memit": {"module": "editharm.methods.memit"}}}
    ds = _downstream({"memit_b10": -0.003, "memit": -0.001}, edits=(0, 1, 10, 100))
    fig4 = F.gu_fig4(_tables(ds), config)
    # One batch of 10: -3 points; batch size 1 at n = 1: -0.1.
    assert "MEMIT batch 10: -3.0 after 10 edits" in fig4.finding and "MEMIT batch 1: -0.1 after 1 edit " in fig4.finding
    assert fig4.agrees is True  # mean -1.55
    seq = F.gu_batch_sequential(_tables(ds), config)
    assert "MEMIT batch 10: -30.0 after 100 edits" in seq.finding and seq.agrees is True


@pytest.mark.parametrize("rect_slope, expected", [(-0.0005, True), (-0.003, False), (-0.002, False)])
def test_gu_fig8_agrees_when_rect_limits_the_harm(rect_slope, expected):
    ds = _downstream({("rome", "none"): -0.002, ("rome", "rect-40"): rect_slope, ("rome", "pca-40"): -0.004})
    result = F.gu_fig8(_tables(ds), {})
    assert result.agrees is expected, result.finding
    assert "none -20.0" in result.finding and f"rect-40 {100 * 100 * rect_slope:+.1f}" in result.finding


def test_gu_fig8_compares_at_the_edits_every_regulariser_reached():
    ds = pd.concat([_downstream({("rome", "none"): -0.002}),
                    _downstream({("rome", "rect-40"): -0.0005}, edits=(0, 10))])
    result = F.gu_fig8(_tables(ds), {})
    assert "after 10 edits: none -2.0, rect-40 -0.5" in result.finding and result.agrees is True


def test_gu_fig8_without_harm_to_limit_is_not_judged():
    ds = _downstream({("rome", "none"): 0.0, ("rome", "rect-40"): 0.0})
    assert F.gu_fig8(_tables(ds), {}).agrees is None


def _editing(rect_reliability: float) -> pd.DataFrame:
    rows = []
    for reg, rel in (("none", 0.95), ("rect-40", rect_reliability), ("random-40", 0.2)):
        for metric, value in (("reliability", rel), ("generalization", rel - 0.1), ("locality", 0.5)):
            rows.append(["tiny", "zsre", "rome", reg, 0, 50, "editing", metric, value])
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.mark.parametrize("rect, expected", [(0.9, True), (0.5, False)])
def test_gu_fig7_agrees_when_rect_keeps_editing_performance(rect, expected):
    result = F.gu_fig7(_tables(pd.DataFrame(columns=COLUMNS), _editing(rect)), {})
    assert result.agrees is expected, result.finding
    assert f"reliability {rect:.2f} vs 0.95 ({rect - 0.95:+.2f})" in result.finding


INFO = {"tiny": {"params": 1_000_000, "chat": False, "family": "tiny"},
        "tiny-chat": {"params": 1_000_000, "chat": True, "family": "tiny"},
        "big": {"params": 9_000_000, "chat": False, "family": "big"}}


@pytest.mark.parametrize("chat_slope, expected", [(-0.0005, True), (-0.004, False)])
def test_li_fig3_agrees_when_the_chat_model_is_harmed_less(chat_slope, expected):
    ds = pd.concat([_downstream({"rome": -0.002}, tasks=LI_TASKS, model="tiny"),
                    _downstream({"rome": chat_slope}, tasks=LI_TASKS, model="tiny-chat")])
    result = F.li_fig3(_tables(ds), {}, INFO)
    assert result.status == "ok" and result.agrees is expected, result.finding
    assert "base models -20.0" in result.finding and "different families" not in result.finding


def test_li_fig3_says_a_cross_family_pair_is_confounded():
    info = {**INFO, "other-chat": {"params": 1_000_000, "chat": True, "family": "other"}}
    ds = pd.concat([_downstream({"rome": -0.002}, tasks=LI_TASKS, model="tiny"),
                    _downstream({"rome": -0.0005}, tasks=LI_TASKS, model="other-chat")])
    result = F.li_fig3(_tables(ds), {}, info)
    assert result.agrees is True and "different families" in result.finding


@pytest.mark.parametrize("big_slope, expected", [(-0.0005, True), (-0.004, False)])
def test_li_fig4_agrees_when_the_larger_model_is_harmed_less(big_slope, expected):
    ds = pd.concat([_downstream({"rome": -0.002}, tasks=LI_TASKS, model="tiny"),
                    _downstream({"rome": big_slope}, tasks=LI_TASKS, model="big")])
    result = F.li_fig4(_tables(ds), {}, INFO)
    assert result.agrees is expected, result.finding
    assert "big (9M)" in result.finding and "tiny (1M) -20.0" in result.finding


def test_publish_and_index_show_the_findings_table(tmp_path: Path):
    ds = _downstream({"rome": -0.002})
    result = F.gu_fig3(_tables(ds), {})
    result.finding += " <script>&"  # must come out escaped
    F.publish(result, tmp_path, show=False)
    meta = json.loads((tmp_path / "gu_fig3.json").read_text())
    assert meta["agrees"] is True and meta["finding"] == result.finding
    assert meta["paper_finding"] == GU_FINDINGS["gu_fig3"]
    flat = F.li_fig2(_tables(_downstream({"rome": 0.0}, tasks=LI_TASKS)), {})
    F.publish(flat, tmp_path, show=False)
    index = tmp_path / "index.html"
    F.write_index(index, tmp_path, ["gu_fig3", "li_fig2", "li_fig6"], {}, "x.yaml")
    text = index.read_text()
    table = text[text.index("<h2 id='findings'>"):text.index("</table>")]
    assert html.escape(result.finding) in table and "<script>" not in table
    assert html.escape(LI_FINDINGS["li_fig2"]) in table
    rows = table.split("<tr>")[2:]
    assert [r.split("<td>")[1].split("</td>")[0].count("gu_fig3") for r in rows] == [2, 0, 0]
    assert "<b>yes</b>" in rows[0] and "<b>no</b>" in rows[1] and "<b>—</b>" in rows[2]
    assert "not rendered" in rows[2]
    missing = F.li_fig6(_tables(pd.DataFrame(columns=COLUMNS)), {})
    F.publish(missing, tmp_path, show=False)
    F.write_index(index, tmp_path, ["li_fig6"], {}, "x.yaml")
    text = index.read_text()
    table = text[text.index("<h2 id='findings'>"):text.index("</table>")]
    assert "missing: no downstream scores in results/tables/downstream.csv (see below)." in table
    assert "<b>—</b>" in table
    assert text.index("id='findings'") < text.index("<div class='fig'")  # at the top


def test_descriptive_figures_report_numbers_without_a_verdict(tmp_path: Path):
    rows = []
    for n in (0, 10, 100):
        for t, numel, share in (("a.weight", 100.0, 0.001 * n), ("b.weight", 300.0, 0.003 * n)):
            for metric, value in (("numel", numel), ("share_above_0.01", share), ("share_above_0.1", share / 2),
                                  ("manhattan", 2.0 * n)):
                rows.append(["tiny", "zsre", "rome", "none", 0, n, t, metric, value])
    ws = pd.DataFrame(rows, columns=COLUMNS)
    table = F.gu_table1({"weight_stats": ws}, {})
    # Weighted by size: (100 * 0.1 + 300 * 0.3) / 400 = 25% above 0.01 after 100 edits; Manhattan 200 + 200.
    assert table.agrees is None and "ROME after 100 edits: 25.00% of the edited elements" in table.finding
    assert "more than 0.01" in table.finding and "Σ|ΔW| 400" in table.finding
    from safetensors.numpy import save_file

    paths = []
    for n, scale in ((1, 1e-4), (8, 4e-4)):
        path = tmp_path / "weightstats" / "tiny" / "zsre" / "rome" / "none" / "seed0" / f"n{n}" / "heatmaps.safetensors"
        path.parent.mkdir(parents=True)
        save_file({"a.weight": np.full((4, 4), scale, dtype=np.float32)}, str(path))
        paths.append(str(path))
    heat = F.gu_fig5(paths, {})
    assert heat.agrees is None and "0.0001 after 1 edit, 0.0004 after 8 edits (x4)" in heat.finding


def test_every_figure_has_a_paper_finding():
    assert set(GU_FINDINGS) | set(LI_FINDINGS) == set(F.FIGURES)
    assert not set(GU_FINDINGS) & set(LI_FINDINGS)
    for name, (_, paper, _) in F.FIGURES.items():
        assert name in (GU_FINDINGS if paper == F.GU else LI_FINDINGS), name


def test_a_missing_figure_is_not_judged(tmp_path: Path):
    result = F.li_fig6(_tables(pd.DataFrame(columns=COLUMNS)), {})
    result.agrees = True  # a figure without data cannot agree, whatever was set
    F.publish(result, tmp_path, show=False)
    meta = json.loads((tmp_path / "li_fig6.json").read_text())
    assert meta["status"] == "missing" and meta["agrees"] is None
    assert meta["paper_finding"] == LI_FINDINGS["li_fig6"]  # the paper's side is there all the same


def test_paper_tasks_come_first_then_the_other_tasks_that_were_run():
    ds = _downstream({"rome": -0.001}, tasks=(("piqa", "accuracy"), ("mmlu", "accuracy"), ("wikitext",
                                                                                         "word_perplexity")))
    notes: list[str] = []
    tasks = _paper_tasks(ds, list(F.LI_TASKS), "Li et al.", notes)
    assert tasks[0] == "mmlu" and sorted(tasks[1:]) == ["piqa", "wikitext"]
    assert any("not the paper's" in n and "piqa" in n and "wikitext" in n for n in notes)
    # The figure draws them all, and measures them all.
    result = F.li_fig2(_tables(ds), {})
    assert set(result.data.task) == {"mmlu", "piqa", "wikitext"} and "3 scores" in result.finding
    # Only paper tasks: no note about others; none of them: every task, with the fallback note.
    notes = []
    assert _paper_tasks(ds[ds.task == "mmlu"], list(F.LI_TASKS), "Li et al.", notes) == ["mmlu"]
    assert not any("not the paper's" in n for n in notes)
    notes = []
    assert sorted(_paper_tasks(ds[ds.task != "mmlu"], list(F.LI_TASKS), "Li et al.", notes)) == ["piqa", "wikitext"]
    assert any("None of Li et al.'s tasks" in n for n in notes)
