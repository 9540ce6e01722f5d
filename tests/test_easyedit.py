"""EasyEdit hyperparameter files (tests/fixtures/easyedit/, the published text with its source
cited in each file) read into editharm's Hparams: every key accounted for, the values equal
editharm's own configs where those cite the same EasyEdit file, unknown keys refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from editharm import api
from editharm.easyedit import EasyEditError, read_easyedit_hparams
from editharm.methods import load_hparams, load_method

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "easyedit"
ALL = sorted(FIXTURES.glob("*.yaml"))


def _raw(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text())


def _variant(tmp_path, name: str, **changes) -> Path:
    """The fixture with keys changed (None removes one), written to tmp_path."""
    raw = _raw(name)
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_fixture_cites_its_source_and_is_read():
    assert len(ALL) >= 8
    methods = set()
    for path in ALL:
        head = path.read_text().splitlines()[0]
        assert head.startswith("# Source: zjunlp/EasyEdit, hparams/") and "commit" in head, path.name
        methods.add(read_easyedit_hparams(path).method)
    assert methods == {"rome", "memit", "pmet", "ft", "kn", "grace", "mend", "serac"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_key_is_mapped_fixed_or_ignored_with_a_reason(path, tmp_path):
    converted = read_easyedit_hparams(path)
    keys = set(_raw(path.name))
    groups = [set(converted.mapped), set(converted.fixed), set(converted.ignored)]
    assert set().union(*groups) == keys
    assert sum(len(g) for g in groups) == len(keys)          # each key in exactly one group
    assert all(len(reason) > 20 for reason in converted.ignored.values())
    # The converted values pass editharm's own reading of a hyperparameter file.
    editharm_file = tmp_path / "converted.yaml"
    editharm_file.write_text(converted.to_yaml())
    assert load_hparams(editharm_file, type(converted.hparams)) == converted.hparams


@pytest.mark.parametrize("fixture, config, differences", [
    ("MEMIT_llama-7b.yaml", "memit/llama-2-7b.yaml", {}),
    ("PMET_llama-7b.yaml", "pmet/llama-2-7b.yaml", {}),
    ("KN_llama-7b.yaml", "kn/llama-2-7b.yaml", {}),
    # editharm's FT-L keeps ROME's norm bound where EasyEdit's file switches it off (the config says so).
    ("FT_llama-7b.yaml", "ft/llama-2-7b.yaml", {"norm_constraint": (None, 5e-4)}),
    # editharm follows Li et al.'s 100 GRACE steps; EasyEdit's own file trains 50 (the config says so).
    ("GRACE_llama-7b.yaml", "grace/llama-2-7b.yaml", {"n_iter": (50, 100)}),
    ("MEND_llama-7b.yaml", "mend/llama-2-7b.yaml", {"log_interval": (1000, 100)}),
])
def test_values_equal_editharm_configs_that_cite_the_same_file(fixture, config, differences):
    converted = read_easyedit_hparams(FIXTURES / fixture)
    own = load_hparams(ROOT / "configs" / "methods" / config, type(converted.hparams))
    a, b = dataclasses.asdict(converted.hparams), dataclasses.asdict(own)
    found = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert found == differences


def test_converted_values():
    rome = read_easyedit_hparams(FIXTURES / "ROME_llama-7b.yaml")
    assert (rome.hparams.layer, rome.hparams.v_lr, rome.hparams.v_weight_decay, rome.hparams.mom2_adjustment) == (5, 0.5, 1e-3, False)
    assert isinstance(rome.hparams.v_lr, float)                      # "5e-1" is a string to PyYAML
    assert rome.mapped["layers"] == "layer" and "covariance" in rome.ignored["mom2_n_samples"]
    assert read_easyedit_hparams(FIXTURES / "ROME_gpt2-xl.yaml").hparams.layer == 17
    grace = read_easyedit_hparams(FIXTURES / "GRACE_gpt2-xl.yaml").hparams
    assert (grace.layer, grace.module, grace.n_iter) == (35, "mlp_up", 200)   # transformer.h[35].mlp.c_fc
    assert read_easyedit_hparams(FIXTURES / "GRACE_llama-7b.yaml").hparams.module == "mlp_down"
    serac = read_easyedit_hparams(FIXTURES / "SERAC_training_llama-7b.yaml")   # names itself with `alg`
    assert (serac.method, serac.hparams.batch_size, serac.hparams.lr) == ("serac", 10, 1e-5)
    mend = read_easyedit_hparams(FIXTURES / "MEND_llama-7b.yaml").hparams
    assert mend.layers == [29, 30, 31] and mend.inner_params[2] == "model.layers.{}.mlp.down_proj.weight"


def test_unknown_and_unsupported_keys_are_refused_by_name(tmp_path):
    with pytest.raises(EasyEditError, match="unknown EasyEdit key.*v_lr_typo"):
        read_easyedit_hparams(_variant(tmp_path, "ROME_llama-7b.yaml", v_lr_typo=0.1))
    with pytest.raises(EasyEditError, match="'act' .*'tanh'.*only 'relu'"):
        read_easyedit_hparams(_variant(tmp_path, "MEND_llama-7b.yaml", act="tanh"))
    with pytest.raises(EasyEditError, match="'rewrite_module_tmp'.*MLP down projection"):
        read_easyedit_hparams(_variant(tmp_path, "FT_llama-7b.yaml", rewrite_module_tmp="model.layers.{}.self_attn.o_proj.weight"))
    with pytest.raises(EasyEditError, match="'layers'.*exactly one"):
        read_easyedit_hparams(_variant(tmp_path, "ROME_llama-7b.yaml", layers=[4, 5]))
    with pytest.raises(EasyEditError, match="'kl_factor'.*no KL term"):
        read_easyedit_hparams(_variant(tmp_path, "FT_llama-7b.yaml", kl_factor=0.1))
    with pytest.raises(EasyEditError, match="'inner_params'.*grid"):
        read_easyedit_hparams(_variant(tmp_path, "MEND_llama-7b.yaml", inner_params=[
            "model.layers.29.mlp.down_proj.weight", "model.layers.30.mlp.up_proj.weight"]))
    with pytest.raises(EasyEditError, match="'DINM' is not one editharm reads"):
        read_easyedit_hparams(_variant(tmp_path, "ROME_llama-7b.yaml", alg_name="DINM"))
    # A value editharm's own validation refuses: the message names the EasyEdit file and the key.
    with pytest.raises(EasyEditError, match=r"GRACE_llama-7b\.yaml \(EasyEdit.*eps_expand"):
        read_easyedit_hparams(_variant(tmp_path, "GRACE_llama-7b.yaml", eps_expand="moving_avg"))
    no_name = _variant(tmp_path, "KN_llama-7b.yaml", alg_name=None)
    with pytest.raises(EasyEditError, match="no alg_name/alg"):
        read_easyedit_hparams(no_name)
    assert read_easyedit_hparams(no_name, method="kn").hparams.p == 0.4


def test_the_api_reads_easyedit_files_for_the_method_asked():
    method, hparams = api.load_method_hparams("memit", FIXTURES / "MEMIT_llama-7b.yaml")
    assert method is load_method("memit") and hparams.layers == [4, 5, 6, 7, 8]
    with pytest.raises(EasyEditError, match="for ROME but method 'memit'"):
        api.load_method_hparams("memit", FIXTURES / "ROME_llama-7b.yaml")
