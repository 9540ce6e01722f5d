import pytest

from editharm.plan import Chain, chain_checkpoints, chains, previous_checkpoint


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
