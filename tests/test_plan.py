import pytest

from editharm.plan import Chain, chain_checkpoints, chains, previous_checkpoint, scored_tasks, base_tasks


def _config(**experiments):
    return {"checkpoints": [1, 10, 100, 1000], "seeds": [0], "experiments": experiments}


def test_previous_checkpoint_walks_the_chain():
    cps = [1, 10, 100, 1000]
    assert [previous_checkpoint(cps, n) for n in cps] == [0, 1, 10, 100]
    with pytest.raises(ValueError, match="not a checkpoint"):
        previous_checkpoint(cps, 50)


def test_a_chain_in_two_experiments_runs_once_to_the_longest():
    exp = dict(models=["m"], datasets=["d"], methods=["rome"])
    config = _config(short=dict(exp, regularisers=["none", "rect-40"], max_edits=10),
                     long=dict(exp, regularisers=["none"], max_edits=1000))
    found = chains(config)
    assert found == [Chain("m", "d", "rome", "none", 0, 1000), Chain("m", "d", "rome", "rect-40", 0, 10)]
    assert chain_checkpoints(config, found[0]) == [1, 10, 100, 1000]
    assert chain_checkpoints(config, found[1]) == [1, 10]


def test_experiment_seeds_override_global_seeds():
    config = _config(e=dict(models=["m"], datasets=["d"], methods=["rome"], regularisers=["none"], max_edits=1, seeds=[3, 4]))
    assert sorted(c.seed for c in chains(config)) == [3, 4]


def test_final_tasks_are_scored_where_an_experiment_ends_unless_it_opts_out():
    exp = dict(models=["m"], datasets=["d"], methods=["rome"])
    config = _config(grid=dict(exp, regularisers=["none", "rect-40"], max_edits=10, final_tasks=False),
                     long=dict(exp, regularisers=["none"], max_edits=100))
    config["tasks"] = {"lambada": {"n": 5}, "mmlu": {"n": 5, "at": "final"}, "piqa": {"at": "every"}}
    none, rect = chains(config)
    per_checkpoint = {n: scored_tasks(config, none, n) for n in chain_checkpoints(config, none)}
    # the cheap tasks everywhere, in the config's order; MMLU only where `long` ends (grid opted out at 10)
    assert per_checkpoint == {1: ["lambada", "piqa"], 10: ["lambada", "piqa"], 100: ["lambada", "mmlu", "piqa"]}
    assert [scored_tasks(config, rect, n) for n in chain_checkpoints(config, rect)] == [["lambada", "piqa"]] * 2
    config["experiments"]["grid"]["final_tasks"] = True
    assert scored_tasks(config, rect, 10) == ["lambada", "mmlu", "piqa"]
    assert scored_tasks(config, none, 10) == ["lambada", "mmlu", "piqa"]


def test_the_unedited_model_is_scored_on_what_its_chains_score():
    exp = dict(datasets=["d"], methods=["rome"], regularisers=["none"])
    config = _config(small=dict(exp, models=["small"], max_edits=10),
                     big=dict(exp, models=["big"], max_edits=10, final_tasks=False))
    config["tasks"] = {"mmlu": {"at": "final"}, "lambada": {}}
    assert base_tasks(config, "small") == ["mmlu", "lambada"]
    assert base_tasks(config, "big") == ["lambada"]
