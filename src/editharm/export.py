"""Export an edited checkpoint as a standard Hugging Face model folder.

The folder holds config.json, model.safetensors and the tokenizer files, so
transformers.AutoModelForCausalLM.from_pretrained, lm-evaluation-harness (`--model hf
--model_args pretrained=<folder>`) and vLLM load the edited model like any other. The
model is rebuilt exactly as scoring rebuilds it (checkpoint.load_edited_model: base model plus
the checkpoint's tensors, bit for bit), and saved in the base model's dtype.

GRACE and SERAC keep their edits as method state (a codebook around one layer, a memory
with a classifier and a counterfactual model) that only their own forward pass reads:
written as plain weights they would be the unedited model, so they are refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from editharm.io import provenance, read_json, write_json

EXPORT_MANIFEST = "editharm_export.json"


class NotExportableError(ValueError):
    """The method's edits are not in the weights, so a weights-only folder cannot hold them."""


def check_exportable(method_name: str, module: str | None = None) -> None:
    from editharm.methods import load_method

    method = load_method(method_name, module)
    if not method.EDITS_WEIGHTS:
        raise NotExportableError(
            f"method {method_name!r} keeps its edits as method state (GRACE: a codebook wrapped around one layer; "
            "SERAC: an edit memory, a scope classifier and a counterfactual model), not in the weights, so a "
            "Hugging Face folder of weights would be the unedited model. Score it inside editharm instead "
            "(`editharm score --checkpoint ...`), or export a weight-editing method (ROME, MEMIT, PMET, FT, KN, "
            "MEND, AlphaEdit)."
        )


def checkpoint_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(checkpoint.safetensors, checkpoint.json) of a checkpoint folder or either of its files."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensors, meta = folder / "checkpoint.safetensors", folder / "checkpoint.json"
    missing = [p.name for p in (tensors, meta) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not an editharm checkpoint: {', '.join(missing)} missing "
                                "(expected results/edits/<model>/<dataset>/<method>/<reg>/seed<s>/n<N>/)")
    return tensors, meta


def _base_model_dir(meta: dict, meta_path: Path) -> Path:
    """The base model folder a checkpoint was made from. Its meta records it as the workflow
    gave it: relative to the folder snakemake ran in, which for the default results_dir is
    the one above results/ (results/edits/<model>/<dataset>/<method>/<reg>/seed<s>/n<N>/)."""
    recorded = meta.get("model_dir")
    if not recorded:
        raise ValueError(f"{meta_path} does not name its base model; pass model_dir=")
    candidates = [Path(recorded)]
    if not Path(recorded).is_absolute():
        parents = meta_path.resolve().parents
        if len(parents) > 8:
            candidates.append(parents[8] / recorded)
    for candidate in candidates:
        if (candidate / "config.json").exists():
            return candidate
    raise FileNotFoundError(f"{meta_path}: its base model {recorded!r} is not found (looked in "
                            f"{', '.join(map(str, candidates))}); pass model_dir=")


def save_model_folder(model, tokenizer, out_dir: str | os.PathLike, manifest: dict, overwrite: bool = False) -> Path:
    """save_pretrained (safetensors) + tokenizer + editharm_export.json, written to a temporary
    folder beside out_dir and renamed into place, so out_dir is complete or absent."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another folder or pass overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / EXPORT_MANIFEST, provenance(**manifest))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                      method_module: str | None = None, overwrite: bool = False) -> Path:
    """Export a checkpoint folder (results/edits/.../n<N>/, or `Editor.save`'s) to out_dir."""
    from editharm.checkpoint import load_edited_model

    tensors, meta_path = checkpoint_files(checkpoint)
    meta = read_json(meta_path)
    check_exportable(meta["method"], method_module)
    base = Path(model_dir) if model_dir else _base_model_dir(meta, meta_path)
    model, tokenizer = load_edited_model(str(base), str(tensors), str(meta_path), method_module)
    return save_model_folder(model, tokenizer, out_dir, overwrite=overwrite, manifest={
        "checkpoint": str(tensors.resolve()), "base_model": str(base.resolve()), "method": meta["method"],
        "regulariser": meta.get("regulariser"), "seed": meta.get("seed"), "edits_total": meta.get("edits_total"),
        "hparams": meta.get("hparams"), "touched_tensors": meta.get("touched_tensors")})


def export_run(config: dict, model: str, dataset: str, method: str, regulariser: str, seed: int, n: int,
               out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Export the workflow's checkpoint of (model, dataset, method, regulariser, seed, n edits)
    under the config's results_dir; the base model is the config's cache_dir/models/<model>."""
    from editharm.plan import Paths

    paths = Paths(config)
    tensors = Path(paths.checkpoint(model, dataset, method, regulariser, seed, n))
    if not tensors.exists():
        raise FileNotFoundError(f"no checkpoint {tensors}: run the workflow for this chain first "
                                f"(snakemake {tensors}), or check results_dir and the chain's values")
    return export_checkpoint(tensors.parent, out_dir, model_dir=paths.model_dir(model),
                             method_module=(config.get("methods", {}).get(method) or {}).get("module"),
                             overwrite=overwrite)
