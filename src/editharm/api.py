"""editharm from Python: load a model, build edit requests, edit, evaluate, measure the change.

    from editharm import api

    model, tok = api.load_model("smollm2-135m")               # a configured name, a folder or a hub id
    requests = api.load_requests("zsre", n=3)                  # a configured dataset, a file, or dicts
    editor = api.Editor(model, tok, "rome", regulariser="rect-40")
    editor.prepare()                                           # covariance + context templates, once
    log = editor.edit(requests)                                # one request after the other
    rows, summary = editor.evaluate()                          # reliability, generalization, locality
    stats = editor.weight_stats()                              # relative change per edited tensor
    editor.save("my_edit/")                                    # a checkpoint `editharm export` reads

Every step calls the function the workflow's own rule calls (jobs.py, sequential.py,
updates.py, evaluate/editing.py, weightstats.py, methods/covariance.py), so an edit made
here equals the pipeline's edit for the same model, requests, hyperparameters,
regulariser and seed.

Where things are kept: `cache_dir` (argument, else $EDITHARM_CACHE_DIR, else
~/.cache/editharm) holds fetched models, downloaded and prepared datasets and the
covariance statistics, in the same layout as the workflow's `cache/` (plan.Paths), so
pointing cache_dir at a workflow's cache reuses what the workflow computed.
Configured names (models, datasets, the covariance corpus) come from a workflow config
(argument `config`, default the repository's config.yaml); relative paths in it are
read relative to the config file's folder.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import yaml

from editharm.config import ENTRY_DEFAULTS
from editharm.requests import EditRequest, ProbePrompt

log = logging.getLogger("editharm.api")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"
STYLES = ("counterfact", "zsre")


# ---------------------------------------------------------------- where things live

@dataclasses.dataclass(frozen=True)
class Workspace:
    """A workflow config (for configured names) and the cache folder the API reads and fills."""

    config: dict
    root: Path        # relative paths in config are relative to this folder
    cache_dir: Path

    @property
    def paths(self):
        from editharm.plan import Paths

        return Paths({"results_dir": self.cache_dir / "results", "cache_dir": self.cache_dir})

    def resolve(self, path: str | os.PathLike | None) -> Path | None:
        if path is None:
            return None
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDITHARM_CACHE_DIR") or Path.home() / ".cache" / "editharm").expanduser()


def workspace(config: str | os.PathLike | dict | Workspace | None = None,
              cache_dir: str | os.PathLike | None = None) -> Workspace:
    """The config (a YAML path, a dict, or the repository's config.yaml) and the cache folder."""
    from editharm.config import with_defaults

    if isinstance(config, Workspace):
        return config if cache_dir is None else dataclasses.replace(config, cache_dir=Path(cache_dir).expanduser())
    if isinstance(config, dict):
        raw, root = copy.deepcopy(config), Path.cwd()
    elif config is None and not DEFAULT_CONFIG.exists():
        # Installed without the repository: no configured names, everything else works.
        raw, root = {}, Path.cwd()
    else:
        path = Path(config) if config is not None else DEFAULT_CONFIG
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist; pass config= a workflow config YAML "
                                    "(like the repository's config.yaml) or a dict")
        raw, root = yaml.safe_load(path.read_text()) or {}, path.resolve().parent
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return Workspace(config=with_defaults(raw), root=root, cache_dir=cache)


# ---------------------------------------------------------------- models

def model_folder(source: str | os.PathLike | dict, *, config=None, cache_dir=None) -> Path:
    """A local model folder for `source`, fetched or converted into the cache on first use.

    `source` is a folder with config.json (used in place), a model name configured under
    `models:` in the config (fetched as the workflow's fetch_model rule does), a model
    source dict ({"kind": "hub", "hub_id": ...}, see models.py), or a Hugging Face hub id
    (owner/name, or owner/name@revision).
    """
    from editharm.jobs import fetch_model

    ws = workspace(config, cache_dir)
    configured = ws.config.get("models") or {}
    if isinstance(source, dict):
        name, spec = "source-" + _slug(repr(sorted(source.items()))), source
    elif Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
        return folder
    elif str(source) in configured:
        name, spec = str(source), configured[str(source)]["source"]
    elif m := re.fullmatch(r"([\w.-]+/[\w.-]+)(?:@([\w.-]+))?", str(source)):
        # owner/name, or owner/name@revision to pin the snapshot (a commit, tag or branch)
        name = "hub--" + str(source).replace("/", "--").replace("@", "--")
        spec = {"kind": "hub", "hub_id": m.group(1), **({"revision": m.group(2)} if m.group(2) else {})}
    else:
        raise ValueError(f"model {source!r} is not a folder with config.json, not a model configured under `models:` "
                         f"(configured: {', '.join(configured) or 'none'}) and not a hub id of the form owner/name")
    folder, manifest = Path(ws.paths.model_dir(name)), Path(ws.paths.model_manifest(name))
    if not manifest.exists():
        log.info("fetching model %s into %s (once; later calls reuse it)", source, folder)
        fetch_model(spec, str(manifest))
    return folder


def load_model(source: str | os.PathLike | dict, *, config=None, cache_dir=None, device=None,
               dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for `source` (see model_folder), in eval mode, gradients off.

    The model remembers its folder (`model.editharm_folder`), which names its covariance
    statistics in the cache and is the base an export or a weight statistic compares with.
    """
    from editharm.models import load_model as load

    folder = model_folder(source, config=config, cache_dir=cache_dir)
    model, tokenizer = load(folder, device=device, dtype=dtype)
    model.editharm_folder = str(folder.resolve())
    return model, tokenizer


def _slug(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- requests

def requests_from_dicts(rows: Iterable[dict], kind: str) -> list[EditRequest]:
    """EditRequests from plain dicts, with the metric style set from the dataset kind.

    `kind` is "counterfact" (metrics compare P(target_new) with P(target_true), Meng et
    al.) or "zsre" (token accuracy of target_new; locality against the unedited model,
    Gu et al. through EasyEdit). Each dict has subject, prompt, target_new and, for
    counterfact, target_true; optional case_id (default: its position), paraphrases
    (filled prompts) and locality ([{"prompt", "target"}] or [[prompt, target]]). The
    prompt may be a template with "{}" for the subject or the filled prompt containing
    the subject (its first occurrence becomes "{}", as the dataset converters do).
    """
    from editharm.editsets import UnusableRecord, subject_template
    from editharm.io import DataError

    if kind not in STYLES:
        raise ValueError(f"kind={kind!r}: say which metrics apply, 'counterfact' (probability comparison of "
                         "target_new and target_true) or 'zsre' (token accuracy of target_new)")
    requests = []
    for index, raw in enumerate(rows):
        where = f"request {index} (0-based)"
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a dict, got {type(raw).__name__}")
        if raw.get("style", kind) != kind:
            raise DataError(f"{where}: style {raw['style']!r} differs from kind={kind!r}; drop the field or fix kind")
        row = {**raw, "style": kind, "case_id": str(raw.get("case_id", index))}
        prompt, subject = row.get("prompt"), row.get("subject")
        if isinstance(prompt, str) and isinstance(subject, str) and prompt.count("{}") != 1:
            try:
                row["prompt"] = subject_template(prompt, subject)
            except UnusableRecord as e:
                raise DataError(f"{where}: field 'prompt': {e}; give a template with one '{{}}' for the subject") from None
        row["locality"] = [p if isinstance(p, dict) else dict(zip(("prompt", "target"), p))
                           for p in row.get("locality", ())]
        requests.append(EditRequest.from_json(row, where=where))
    return requests


def requests_from_file(path: str | os.PathLike, format: str | None = None) -> list[EditRequest]:
    """EditRequests from a dataset file.

    A .jsonl file is a prepared edit set (the workflow's results/editsets/ or
    cache/data/prepared/ rows); any other file is a raw dataset file in `format`
    (counterfact_rome, counterfact_easyedit, zsre_mend: see editsets.py), which also
    sets each request's metric style. Records the converters cannot edit are skipped
    and logged, as in the workflow.
    """
    from editharm.editsets import convert_file, edit_set_formats, load_requests, log_skipped

    path = Path(path)
    if path.suffix == ".jsonl" and format is None:
        return load_requests(path)
    if format is None:
        raise ValueError(f"{path}: a raw dataset file needs format=, one of {', '.join(edit_set_formats())}")
    conversion = convert_file(format, path)
    log_skipped(path, conversion)
    return [EditRequest.from_json(row, where=f"{path}, record {i}") for i, row in enumerate(conversion.rows)]


def mirror_dir(*, config=None) -> Path | None:
    """The dataset mirror that downloads try first: the config's mirror_dir, relative to the config
    file's folder (None when the config names none). It need not exist: without it every file
    comes from its canonical source."""
    ws = workspace(config)
    return ws.resolve(ws.config.get("mirror_dir"))


def mirror_file(relative: str | os.PathLike, mirror: str | os.PathLike | None = None, *, config=None) -> Path:
    """`relative` inside the dataset mirror: `mirror`, else the config's (mirror_dir), for scripts that
    read a raw file directly (the benchmarks). Whether it exists is left to the reader, which names
    the missing path; only a mirror that is not known at all is an error here."""
    root = Path(mirror).expanduser() if mirror is not None else mirror_dir(config=config)
    if root is None:
        raise ValueError(f"no dataset mirror to find {relative} in: the config sets no mirror_dir; pass the mirror "
                         "folder (a benchmark's --mirror) or the file's own path")
    return root / relative


def prepared_dataset(name: str, *, config=None, cache_dir=None) -> Path:
    """The prepared JSONL of a dataset configured under `datasets:`, downloaded (mirror first,
    sha256 checked) and normalised into the cache on first use, as the workflow's
    download_dataset and prepare_dataset rules do."""
    from editharm.jobs import download_dataset, prepare_dataset

    ws = workspace(config, cache_dir)
    datasets = ws.config.get("datasets") or {}
    if name not in datasets:
        raise ValueError(f"dataset {name!r} is not configured under `datasets:` (configured: {', '.join(datasets)})")
    prepared = Path(ws.paths.prepared(name))
    if not prepared.exists():
        manifest = ws.paths.raw_manifest(name)
        if not Path(manifest).exists():
            mirror = mirror_dir(config=ws)
            download_dataset(name, datasets[name], str(mirror) if mirror and mirror.is_dir() else None, manifest)
        prepare_dataset(datasets[name], manifest, str(prepared))
    return prepared


def load_requests(source: str | os.PathLike | Iterable[dict], *, kind: str | None = None, format: str | None = None,
                  n: int | None = None, seed: int = 0, config=None, cache_dir=None) -> list[EditRequest]:
    """Edit requests from dicts (`kind` required), a file (see requests_from_file) or a configured dataset.

    For a configured dataset name (e.g. "zsre", "counterfact") the first n requests of
    the workflow's edit set for `seed` are returned: the same requests, in the same
    order, that the workflow edits for that dataset and seed. For a file or dicts, the
    first n.
    """
    from editharm.editsets import sample_edit_set
    from editharm.io import read_jsonl

    if isinstance(source, (str, os.PathLike)):
        ws = workspace(config, cache_dir)
        if str(source) in (ws.config.get("datasets") or {}) and not Path(source).exists():
            rows = read_jsonl(prepared_dataset(str(source), config=ws))
            if n is not None:
                rows = sample_edit_set(rows, n, seed)
            requests = [EditRequest.from_json(r, where=f"dataset {source}") for r in rows]
        else:
            if not Path(source).exists():
                raise FileNotFoundError(f"{source} is neither a file nor a dataset configured under `datasets:` "
                                        f"(configured: {', '.join(ws.config.get('datasets') or {})})")
            requests = requests_from_file(source, format)
    else:
        if kind is None:
            raise ValueError("requests given as dicts need kind='counterfact' or kind='zsre': it picks the editing "
                             "metrics (probability comparison vs token accuracy)")
        requests = requests_from_dicts(source, kind)
    if kind is not None and any(r.style != kind for r in requests):
        raise ValueError(f"kind={kind!r} but the dataset's requests have style {requests[0].style!r}; "
                         "a dataset's format decides its style, drop kind=")
    return requests[:n] if n is not None else requests


# ---------------------------------------------------------------- hyperparameters

def load_method_hparams(method: str, hparams=None, *, family: str | None = None, module: str | None = None,
                        config=None):
    """(method module, Hparams) from a YAML path (editharm's or EasyEdit's), a dict, an
    Hparams instance, or None: the repository's configs/methods/<method>/<family>.yaml."""
    from editharm.methods import load_hparams, load_method

    mod = load_method(method, module)
    if isinstance(hparams, mod.Hparams):
        return mod, hparams
    if isinstance(hparams, dict):
        fields = {f.name for f in dataclasses.fields(mod.Hparams)}
        unknown = sorted(set(hparams) - fields)
        if unknown:
            raise ValueError(f"unknown {method} hyperparameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
        return mod, mod.Hparams(**hparams)
    if hparams is None:
        if family is None:
            raise ValueError("no hyperparameters given and the model family is unknown; pass hparams=")
        ws = workspace(config)
        spec = (ws.config.get("methods") or {}).get(method) or {}
        folder = ws.resolve(spec["hparams_dir"]) if spec.get("hparams_dir") else REPO_ROOT / "configs" / "methods" / method
        hparams = folder / f"{family}.yaml"
    from editharm.easyedit import is_easyedit_file, read_easyedit_hparams

    path = Path(hparams)
    if is_easyedit_file(path):
        converted = read_easyedit_hparams(path, method=mod.NAME)
        log.info("read EasyEdit hyperparameters %s; ignored keys: %s", path, ", ".join(sorted(converted.ignored)) or "none")
        return mod, converted.hparams
    return mod, load_hparams(path, mod.Hparams)


# ---------------------------------------------------------------- editing

class Editor:
    """One model, one method, one regulariser: edits applied in order, as a workflow chain does.

    The model is changed in place. `edit()` may be called repeatedly; each call continues
    the sequence (edit indices, regulariser seeds and method state carry on). Methods that
    keep their edits as state (GRACE, SERAC) leave the weights alone: use `edited_model()`
    to get the model that answers with the edits.
    """

    def __init__(self, model, tokenizer, method: str, hparams=None, *, regulariser: str = "none", seed: int = 0,
                 batch_size: int = 1, module: str | None = None, trained_dir: str | os.PathLike | None = None,
                 config=None, cache_dir=None, model_id: str | None = None, corpus: str | None = None,
                 stats_tokens: int | None = None, progress: bool = True):
        from editharm.methods.base import EditContext
        from editharm.models import layout_for
        from editharm.regularize import parse_regulariser

        self.model, self.tokenizer = model, tokenizer
        self.layout = layout_for(model)
        self.ws = workspace(config, cache_dir)
        self.method, self.hparams = load_method_hparams(method, hparams, family=self.layout.family, module=module,
                                                        config=self.ws)
        self.regulariser = parse_regulariser(regulariser)
        if self.regulariser.kind != "none" and not self.method.EDITS_WEIGHTS:
            raise ValueError(f"regulariser {regulariser!r} cannot apply to method {method!r}: its edit is a state "
                             "change (codebook/memory), not a weight update; use 'none'")
        if batch_size > 1 and not self.method.SUPPORTS_BATCH:
            raise ValueError(f"batch_size {batch_size} > 1 but {method} edits one request at a time; use 1")
        if getattr(self.method, "TRAINED", False) and trained_dir is None:
            raise ValueError(f"{method} edits with trained parts (hypernetwork / classifier): pass trained_dir=, the "
                             "folder the workflow's train_method rule wrote (cache/trained/<model>/<method>/<dataset>/), "
                             "or train them first with Editor.train(requests, out_dir) on a fresh Editor")
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
        self.model_id = model_id or _model_id(model, self.ws)
        self.corpus = corpus or self.ws.config.get("covariance", {}).get("corpus", "wikitext2")
        self.stats_tokens = stats_tokens or self.ws.config.get("covariance", {}).get("tokens", 200000)
        self.stats_seq_len = self.ws.config.get("covariance", {}).get("seq_len", ENTRY_DEFAULTS["covariance"]["seq_len"])
        self._covariance_of = None
        self.context = EditContext(layout=self.layout, covariance=self._covariance, state={}, seed=seed,
                                   artifacts={"trained_dir": str(trained_dir)} if trained_dir else {})
        self.edited: list[EditRequest] = []
        self.log: list[dict] = []
        self._base: dict[str, torch.Tensor] = {}      # value of every touched tensor before the first edit
        self._reference: dict[str, Any] = {}           # zsRE locality: the unedited model's argmax per case
        self._prepared = False
        random.seed(seed)
        torch.manual_seed(seed)

    # -- preparation -------------------------------------------------------------------

    def prepare(self) -> dict[str, float]:
        """Compute what the first edit would otherwise compute inside its own time.

        1. the covariance statistics of the layers the method needs (stats_layers), loaded
           from the cache or computed over the configured corpus with a progress bar and
           cached (one pass for all missing layers);
        2. the context templates ROME/MEMIT/PMET/AlphaEdit prepend to the prompt,
           generated by sampling from the model (the same for every later edit).
        Runs on the unedited model; `edit()` calls it first if you did not. Returns the
        seconds each step took.
        """
        if self._prepared:
            return {}
        if self.edited:
            raise RuntimeError("prepare() must run before the first edit: statistics and templates come from the unedited model")
        timings = {"covariance_seconds": self._prepare_covariance()}
        length_params = getattr(self.hparams, "context_template_length_params", None)
        t0 = time.perf_counter()
        if length_params is not None:
            from editharm.methods.prompts import context_templates

            templates = context_templates(self.model, self.tokenizer, self.context, length_params)
            timings["context_templates_seconds"] = time.perf_counter() - t0
            log.info("generated %d context templates in %.1f s (once; every edit reuses them)",
                     sum(len(g) for g in templates), timings["context_templates_seconds"])
        self._prepared = True
        return timings

    def _stats_layers(self) -> list[int]:
        layers = getattr(self.method, "stats_layers", None)
        return sorted(set(layers(self.hparams, self.layout))) if layers else []

    def _prepare_covariance(self) -> float:
        from editharm.corpus import iter_texts
        from editharm.io import provenance
        from editharm.methods.covariance import collect_second_moments, covariance_loader, save_second_moment

        layers = self._stats_layers()
        paths = {l: self.ws.paths.layer_stats(self.model_id, self.corpus, self.stats_tokens, l) for l in layers}
        missing = [l for l in layers if not Path(paths[l]).exists()]
        t0 = time.perf_counter()
        if missing:
            corpus = prepared_dataset(self.corpus, config=self.ws)
            log.info("computing covariance statistics of layers %s over %d tokens of %s (once; cached in %s)",
                     missing, self.stats_tokens, self.corpus, Path(paths[missing[0]]).parent)
            moments = collect_second_moments(self.model, self.tokenizer, self.layout, missing, iter_texts(corpus),
                                             n_tokens=self.stats_tokens, seq_len=self.stats_seq_len,
                                             progress=self.progress)
            seconds = time.perf_counter() - t0
            for layer in missing:
                save_second_moment(paths[layer], moments[layer],
                                   provenance(layer=layer, tokens=self.stats_tokens, corpus=str(corpus), seconds=seconds,
                                              model=self.model_id))
        self._covariance_of = covariance_loader({l: str(p) for l, p in paths.items()})
        return time.perf_counter() - t0

    def _covariance(self, layer: int) -> torch.Tensor:
        if self._covariance_of is None:
            raise RuntimeError("covariance statistics are loaded by prepare(), which edit() runs first")
        return self._covariance_of(layer)

    # -- editing -----------------------------------------------------------------------

    def train(self, requests: Sequence[EditRequest], out_dir: str | os.PathLike) -> dict:
        """Train a method's trained parts (MEND, SERAC) on `requests` into out_dir, as the
        workflow's train_method rule does; later Editors take out_dir as trained_dir."""
        if not getattr(self.method, "TRAINED", False):
            raise ValueError(f"{self.method.NAME} has nothing to train")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed)
        summary = self.method.train(self.model, self.tokenizer, list(requests), self.hparams, Path(out_dir), self.seed)
        self.context.artifacts["trained_dir"] = str(out_dir)
        return summary

    def edit(self, requests: EditRequest | Sequence[EditRequest], *, immediate_success: bool = True) -> list[dict]:
        """Edit the requests in order (batch_size at a time), continuing earlier edits.

        Each weight update is regularised, checked for NaN/Inf and added exactly as in the
        workflow (updates.write_update). Returns one log row per request: seconds
        (the first edit's includes nothing of prepare()), the method's info, the
        regulariser's info and, if asked, the reliability right after the edit.
        """
        from editharm.evaluate.editing import immediate_success as success_of
        from editharm.methods.base import WeightUpdate
        from editharm.sequential import check_finite_info, jsonable, operations
        from editharm.updates import write_update

        if isinstance(requests, EditRequest):
            requests = [requests]
        requests = list(requests)
        done = {r.case_id for r in self.edited}
        clash = [r.case_id for r in requests if r.case_id in done]
        if clash or len({r.case_id for r in requests}) != len(requests):
            raise ValueError(f"case_id values must be distinct across all edits of an Editor; repeated: {clash or 'within this call'}")
        if not self._prepared:
            timings = self.prepare()
            log.info("prepared before the first edit: %s", ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        self._reference_for(requests)
        rows = []
        for batch in operations(requests, self.batch_size):
            edit_index = len(self.edited)
            t0 = time.perf_counter()
            update = self.method.apply(self.model, self.tokenizer, batch, self.hparams, self.context)
            check_finite_info(update.info, f"edit {edit_index} (request {batch[0].case_id}) by method {self.method.NAME}")
            if isinstance(update, WeightUpdate):
                for name in update.deltas:
                    if name not in self._base:
                        self._base[name] = self.model.get_parameter(name).detach().clone()
            reg_info = write_update(self.method, self.model, self.tokenizer, batch, self.hparams, self.context,
                                    update, self.regulariser, self.seed, edit_index)
            seconds = time.perf_counter() - t0
            self.edited.extend(batch)
            success = (success_of(self.edited_model(), self.tokenizer, batch) if immediate_success
                       else [None] * len(batch))
            for j, request in enumerate(batch):
                rows.append({"edit_index": edit_index + j, "case_id": request.case_id, "seconds": seconds / len(batch),
                             "operation_seconds": seconds, "immediate_success": success[j],
                             **jsonable(update.info), "regulariser": reg_info})
        self.log.extend(rows)
        return rows

    def edited_model(self):
        """The model that answers with the edits: the model itself, or for GRACE/SERAC the
        model wrapped by the method's attach() around its current state."""
        attach = getattr(self.method, "attach", None)
        if attach is None:
            return self.model
        return attach(self.model, self.tokenizer, self.context.state, self.hparams, self.context)

    # -- measuring ---------------------------------------------------------------------

    def _reference_for(self, requests: Sequence[EditRequest]) -> None:
        """zsRE locality compares with the unedited model: record its argmax now, with the
        unedited values of already-touched tensors put back for the measurement."""
        from editharm.checkpoint import write_tensors
        from editharm.evaluate.editing import locality_reference

        todo = [r for r in requests if r.style == "zsre" and r.locality and r.case_id not in self._reference]
        if not todo:
            return
        current = {name: self.model.get_parameter(name).detach().clone() for name in self._base}
        write_tensors(self.model, self._base)
        attach = getattr(self.method, "attach", None)
        # attach() with an empty state is the unedited model (GRACE: no codebook, SERAC: no memory).
        unedited = attach(self.model, self.tokenizer, {}, self.hparams, self.context) if attach else self.model
        try:
            self._reference.update(locality_reference(unedited, self.tokenizer, todo, progress=False))
        finally:
            write_tensors(self.model, current)
            if attach and self.edited:
                self.edited_model()  # GRACE installs its codebook in place: put the current one back

    def evaluate(self, requests: Sequence[EditRequest] | None = None, *, batch_size: int = 32,
                 progress: bool = False) -> tuple[list[dict], dict]:
        """The workflow's editing metrics over `requests` (default: every edit so far).

        Each request's style (set from its dataset) picks the definitions: CounterFact's
        probability comparison or zsRE's token accuracy, with zsRE locality measured
        against the unedited model's predictions. Returns per-request rows and the summary.
        """
        from editharm.evaluate.editing import edit_metrics

        requests = list(self.edited if requests is None else requests)
        self._reference_for(requests)
        return edit_metrics(self.edited_model(), self.tokenizer, requests, reference=self._reference,
                            batch_size=batch_size, progress=progress)

    def weight_stats(self, thresholds=None, quantiles=None, heatmaps: bool = False) -> dict[str, Any]:
        """Per edited tensor, the change statistics of weightstats.tensor_stats (relative
        change shares and quantiles, Manhattan and Frobenius norms) of W_now - W_before.
        Thresholds and quantiles default to the config's weight_stats. With heatmaps=True
        each entry is (stats, heat map)."""
        from editharm.weightstats import tensor_stats

        cfg = self.ws.config["weight_stats"]
        out = {}
        for name in sorted(self._base):
            stats, heat = tensor_stats(self._base[name], self.model.get_parameter(name).detach(),
                                       thresholds or cfg["thresholds"], quantiles or cfg["quantiles"],
                                       tuple(cfg["heatmap_size"]))
            out[name] = (stats, heat) if heatmaps else stats
        return out

    # -- saving ------------------------------------------------------------------------

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the edits as a workflow checkpoint: out_dir/checkpoint.safetensors (touched
        tensors + method state), checkpoint.json (method, hparams, regulariser, seed, model
        folder) and edit_log.jsonl. `editharm export` and export.export_checkpoint read it."""
        from editharm.checkpoint import save_checkpoint
        from editharm.io import provenance, write_jsonl
        from editharm.sequential import current_tensors

        out = Path(out_dir)
        meta = provenance(edits_total=len(self.edited), edits_in_segment=len(self.edited),
                          regulariser=self.regulariser.name, seed=self.seed, batch_size=self.batch_size,
                          method=self.method.NAME, hparams=dataclasses.asdict(self.hparams),
                          model_dir=getattr(self.model, "editharm_folder", None),
                          case_ids=[r.case_id for r in self.edited])
        write_jsonl(out / "edit_log.jsonl", self.log)
        save_checkpoint(out / "checkpoint.safetensors", out / "checkpoint.json", current_tensors(self.model, self._base),
                        self.context.state, meta)
        return out

    def export(self, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the edited model as a Hugging Face folder (safetensors + tokenizer) that
        transformers, lm-eval's hf backend and vLLM load; refused for GRACE and SERAC,
        whose edits are not in the weights (export.check_exportable says why)."""
        from editharm.export import check_exportable, save_model_folder

        check_exportable(self.method.NAME)
        return save_model_folder(self.model, self.tokenizer, out_dir, overwrite=overwrite, manifest={
            "base_model": getattr(self.model, "editharm_folder", None), "method": self.method.NAME,
            "regulariser": self.regulariser.name, "seed": self.seed, "edits_total": len(self.edited),
            "hparams": dataclasses.asdict(self.hparams), "touched_tensors": sorted(self._base)})


def _model_id(model, ws: Workspace) -> str:
    """The name of the model's covariance statistics in the cache: a model the cache holds
    (cache/models/<name>) keeps its name, so statistics the workflow computed are reused;
    any other folder or hub id gets its last part plus a hash of the full path."""
    source = getattr(model, "editharm_folder", None) or getattr(model, "name_or_path", None)
    if not source:
        raise ValueError("cannot tell which model this is (no name_or_path); pass model_id= to name its cached statistics")
    folder = Path(source)
    if folder.resolve() == Path(ws.paths.model_dir(folder.name)).resolve():
        return folder.name
    return f"{folder.name}-{_slug(str(source))}"


def edit(model, tokenizer, requests, method: str, hparams=None, *, regulariser: str = "none", seed: int = 0,
         **kwargs) -> tuple[Editor, list[dict]]:
    """One call: an Editor for (method, hparams, regulariser, seed) that has edited `requests`."""
    editor = Editor(model, tokenizer, method, hparams, regulariser=regulariser, seed=seed, **kwargs)
    return editor, editor.edit(requests)
