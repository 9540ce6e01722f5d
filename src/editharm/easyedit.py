"""EasyEdit hyperparameter files -> editharm's Hparams, key by key.

Li et al. (2024) and Gu et al. (2024) published their settings as EasyEdit YAML files
(zjunlp/EasyEdit hparams/<ALG>/<model>.yaml, and hparams/TRAINING/<ALG>/ for MEND and
SERAC). `read_easyedit_hparams(path)` reads one for ROME, MEMIT, PMET, FT, KN, GRACE,
MEND or SERAC and returns editharm's Hparams plus an account of every key:

  mapped   EasyEdit key -> editharm field (renamed, or converted: ROME's `layers: [5]` is
           `layer: 5`; GRACE's `inner_params` is `layer` + `module`; MEND's concrete
           weight names are templates + `layers`)
  fixed    keys whose published value is the only behaviour editharm implements (e.g.
           MEND `act: relu`); another value is refused, naming the key
  ignored  keys with no editharm meaning, each with the reason (paths, devices, logging,
           module templates editharm derives from the architecture, covariance settings
           that config.yaml's `covariance:` holds)

A key in none of these is refused with its name: silently dropping a setting could change
what a reproduction runs. The result is validated exactly as an editharm YAML file is
(methods.load_hparams: names, types, ranges), and `to_yaml()` writes it as one.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

# EasyEdit's alg_name (or `alg` in its TRAINING files) -> editharm method.
METHODS = {"ROME": "rome", "MEMIT": "memit", "PMET": "pmet", "FT": "ft", "FT-L": "ft", "KN": "kn",
           "GRACE": "grace", "MEND": "mend", "SERAC": "serac"}

_PLACES = "where the model and statistics live is editharm's config and cache, not the hyperparameters"
_TEMPLATE = "editharm derives module paths from the model's architecture (models.ModelLayout)"
_COVARIANCE = "the covariance statistics are set once for all methods in config.yaml `covariance:` (corpus, tokens)"
_TRAINING_LOG = "training bookkeeping (logging, validation, saving, early stopping on a validation key) of EasyEdit's trainer"
_IGNORED_ALL = {
    "alg_name": "names the method; checked against the method being read",
    "alg": "names the method; checked against the method being read",
    "model_name": _PLACES, "stats_dir": _PLACES, "results_dir": _PLACES, "archive": "editharm trains MEND/SERAC "
    "itself (train_method rule, cache/trained/); an EasyEdit archive is not read",
    "device": "editharm places the model on the available device", "model_parallel": "editharm runs one device",
    "model_class": "editharm loads any causal LM with AutoModelForCausalLM",
    "tokenizer_class": "editharm loads the model folder's own tokenizer", "tokenizer_name": "editharm loads the model folder's own tokenizer",
    "layer_module_tmp": _TEMPLATE, "mlp_module_tmp": _TEMPLATE, "attn_module_tmp": _TEMPLATE,
    "ln_f_module": _TEMPLATE, "lm_head_module": _TEMPLATE,
}
_IGNORED_LOCATE = {
    "v_loss_layer": "editharm's value loss reads the model's output (EasyEdit's published files set the last layer)",
    "mom2_dataset": _COVARIANCE, "mom2_n_samples": _COVARIANCE, "mom2_dtype": _COVARIANCE + " (stored float32)",
}
_IGNORED_TRAINER = {k: _TRAINING_LOG for k in (
    "seed", "model_save_pt", "silent", "log_errors", "eval_log_interval", "final_eval", "val_interval",
    "early_stop_patience", "early_stop_key", "eval_only", "half", "debug", "save", "verbose", "val_batch_size",
    "val_steps", "edit_bs")}
_IGNORED_TRAINER["seed"] = "editharm takes the seed from the run (config seeds, Editor(seed=...))"
_IGNORED_TRAINER["edit_bs"] = "edits per operation is the run's batch_size, not a hyperparameter"


@dataclasses.dataclass
class Converted:
    """An EasyEdit file read into editharm: the Hparams and what happened to every key."""

    source: Path
    method: str
    hparams: Any
    mapped: dict[str, str]
    fixed: dict[str, Any]
    ignored: dict[str, str]

    def to_yaml(self) -> str:
        """The hyperparameters as an editharm YAML file, its provenance in comments."""
        lines = [f"# Converted from the EasyEdit file {self.source} by editharm.easyedit.", "# Ignored keys:"]
        lines += [f"#   {k}: {why}" for k, why in sorted(self.ignored.items())]
        return "\n".join(lines) + "\n" + yaml.safe_dump(_plain(dataclasses.asdict(self.hparams)), sort_keys=False)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class EasyEditError(ValueError):
    """An EasyEdit file editharm cannot read faithfully; the message names the file and key."""


# ---------------------------------------------------------------- module names

def _module_templates() -> dict[str, tuple[str, str]]:
    """Every family's module template -> (family, ModelLayout attribute), e.g.
    'model.layers.{}.mlp.down_proj' -> ('llama', 'mlp_down')."""
    from editharm.models import _TEMPLATES

    return {spec[attr]: (family, attr) for family, spec in _TEMPLATES.items()
            for attr in ("mlp_down", "mlp_up", "attn_out", "layer", "mlp")}


def _as_template(name: str) -> tuple[str, int | None]:
    """A concrete module or weight name -> (template with "{}", layer); 'model.layers[27].x'
    (GRACE's bracket form) and 'model.layers.27.x' both give ('model.layers.{}.x', 27)."""
    name = re.sub(r"\[(\d+)\]", r".\1", name)
    m = re.search(r"\.(\d+)(?=\.|$)", name)
    if m is None:
        return name, None
    return name[:m.start()] + ".{}" + name[m.end():], int(m.group(1))


def _module_of(template: str) -> tuple[str, str] | None:
    return _module_templates().get(template.removesuffix(".weight").removesuffix(".bias"))


# ---------------------------------------------------------------- reading

class _Reader:
    def __init__(self, path: Path, raw: dict, method: str):
        self.path, self.raw, self.method = path, raw, method
        self.values: dict[str, Any] = {}
        self.mapped: dict[str, str] = {}
        self.fixed: dict[str, Any] = {}
        self.ignored: dict[str, str] = {}

    def fail(self, key: str, problem: str) -> None:
        raise EasyEditError(f"{self.path}: EasyEdit key {key!r} (value {self.raw.get(key)!r}): {problem}")

    def same(self, *keys: str) -> None:
        for key in keys:
            self.to(key, key)

    def to(self, key: str, field: str, convert: Callable[[Any], Any] = lambda v: v) -> None:
        if key in self.raw:
            self.values[field] = convert(self.raw[key])
            self.mapped[key] = field

    def only(self, key: str, allowed: tuple, what: str) -> None:
        """A key whose only editharm behaviour is `allowed` (None/'None' both mean unset)."""
        if key not in self.raw:
            return
        value = None if self.raw[key] == "None" else self.raw[key]
        if value not in allowed:
            self.fail(key, f"editharm implements only {allowed[0]!r} here ({what}); change it or use EasyEdit")
        self.fixed[key] = value

    def ignore(self, reasons: dict[str, str]) -> None:
        for key, why in reasons.items():
            if key in self.raw:
                self.ignored[key] = why

    def rewrite_module(self, key: str, attrs: tuple[str, ...] = ("mlp_down",)) -> None:
        """EasyEdit's module template of the edited weight: must be one editharm edits."""
        if key not in self.raw:
            return
        values = self.raw[key] if isinstance(self.raw[key], list) else [self.raw[key]]
        for value in values:
            found = _module_of(str(value))
            if found is None or found[1] not in attrs:
                self.fail(key, f"editharm's {self.method} edits the MLP down projection "
                          f"({', '.join(sorted(t for t, (_, a) in _module_templates().items() if a == 'mlp_down'))}); "
                          "a file editing another module cannot be reproduced")
        self.ignored[key] = "checked: the MLP down projection, which " + _TEMPLATE


def _single_layer(reader: _Reader, key: str) -> int:
    layers = reader.raw[key]
    if not isinstance(layers, list) or len(layers) != 1:
        reader.fail(key, "editharm's ROME edits one layer; give exactly one, e.g. layers: [5]")
    return layers[0]


def _norm_constraint(value):
    return None if value is False or value is None else value


# per method: fills reader.values/mapped/fixed/ignored from reader.raw
def _locate_and_edit(r: _Reader) -> None:
    r.same("fact_token", "v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor",
           "mom2_adjustment", "context_template_length_params")
    r.ignore(_IGNORED_LOCATE)
    r.rewrite_module("rewrite_module_tmp")


def _rome(r: _Reader) -> None:
    _locate_and_edit(r)
    r.to("layers", "layer", lambda _: _single_layer(r, "layers"))


def _memit(r: _Reader) -> None:
    _locate_and_edit(r)
    r.same("layers", "mom2_update_weight")
    r.only("layer_selection", ("all",), "every listed layer is edited")


def _pmet(r: _Reader) -> None:
    _memit(r)
    r.same("nll_loss_factor")
    r.rewrite_module("rewrite_module_tmps")


def _ft(r: _Reader) -> None:
    r.same("layers", "num_steps", "batch_size", "lr", "weight_decay")
    r.to("norm_constraint", "norm_constraint", _norm_constraint)
    r.to("objective_optimization", "objective")
    r.only("kl_factor", (0, 0.0), "FT has no KL term")
    r.ignore({"max_length": "EasyEdit cuts prompt + target to this many tokens; editharm does not cut (edit "
                            "prompts are far shorter than the published 30-40)"})
    r.rewrite_module("rewrite_module_tmp")


def _kn(r: _Reader) -> None:
    r.same("steps", "batch_size", "adaptive_threshold", "p", "refine")
    unread = "not read by EasyEdit's KN (kn_main.py passes only p, batch_size, steps, adaptive_threshold, refine)"
    r.ignore({"lr_scale": unread, "n_toks": unread})


def _grace(r: _Reader) -> None:
    # eps_expand passes as written: EasyEdit's code knows "coverage" and "moving_average" (its
    # comment's "moving_avg" matches neither branch there), and editharm accepts the same two.
    r.same("edit_lr", "n_iter", "eps", "val_init", "eps_expand")
    if "inner_params" in r.raw:
        params = r.raw["inner_params"]
        if not isinstance(params, list) or len(params) != 1:
            r.fail("inner_params", "GRACE wraps exactly one module; give one weight name")
        template, layer = _as_template(str(params[0]))
        found = _module_of(template)
        if found is None or layer is None:
            r.fail("inner_params", f"{params[0]!r} is not a per-layer module editharm knows "
                   f"(known: {', '.join(sorted(_module_templates()))})")
        r.values.update(layer=layer, module=found[1])
        r.mapped["inner_params"] = "layer, module"
    r.only("dist_fn", ("euc",), "Euclidean distance, the only one EasyEdit's GRACE computes")
    r.only("val_train", ("sgd",), "values trained by Adam on the edit's NLL, no perturbation")
    r.only("replacement", ("replace_last",), "the value replaces the module output where a query falls in a radius")
    r.only("dropout", (0, 0.0), "no dropout")
    unread = "not read by EasyEdit's GRACE (GRACE.py always runs n_iter steps); editharm's early_stop_loss stays 0"
    r.ignore({"reg": unread, "val_reg": unread,
              "num_pert": "used only with perturbation training (val_train), which editharm does not implement"})


def _mend(r: _Reader) -> None:
    r.same("lr", "edit_lr", "lr_lr", "cedit", "cloc", "n_hidden", "norm", "combine", "rank", "batch_size",
           "max_iters", "log_interval", "accumulate_bs", "grad_clip")
    if "inner_params" in r.raw:
        pairs = [_as_template(str(p)) for p in r.raw["inner_params"]]
        templates = list(dict.fromkeys(t for t, _ in pairs))
        layers = sorted({l for _, l in pairs if l is not None})
        if any(l is None for _, l in pairs) or {(t, l) for t, l in pairs} != {(t, l) for t in templates for l in layers}:
            r.fail("inner_params", "editharm's MEND edits every weight template at every listed layer; "
                   "these names are not such a grid")
        r.values.update(inner_params=templates, layers=layers)
        r.mapped["inner_params"] = "inner_params (templates), layers"
    for key, allowed, what in (("init", ("id",), "the residual layers start as the identity"),
                               ("act", ("relu",), "ReLU"), ("mlp_class", ("IDMLP",), "the identity-initialised MLP"),
                               ("shared", (True,), "one network per weight shape"), ("one_sided", (False,), "both factors"),
                               ("x_only", (False,), "both factors"), ("delta_only", (False,), "both factors"),
                               ("hidden_dim", (None,), "the hidden size is the rank"), ("dropout", (0, 0.0), "no dropout"),
                               ("train_base", (False,), "the base model is frozen"),
                               ("no_grad_layers", (None,), "no frozen layers"), ("opt", ("Adam",), "Adam"),
                               ("lr_scale", (1, 1.0), "the learned step sizes are used as they are")):
        r.only(key, allowed, what)
    r.ignore({"cbase": "weight of the base-model loss, used only with train_base (editharm freezes the base model)"})


def _serac(r: _Reader) -> None:
    r.same("lr", "batch_size", "max_iters", "log_interval", "grad_clip")
    design = "editharm's SERAC differs here by design (serac.py): its scope classifier reads the base model's own " \
             "hidden state and its counterfactual model is the base model reading the edit (freeze_cntr variant)"
    r.ignore({k: design for k in ("small_name", "cls_name", "cls_class", "freeze_cntr", "edit_lr", "lr_lr",
                                  "cedit", "cloc", "cbase", "unlikelihood", "supervised", "freeze")})
    r.ignore({"accumulate_bs": "editharm steps the classifier's optimiser every batch (no accumulation)"})
    if r.raw.get("inner_params") not in (None, []):
        r.fail("inner_params", "SERAC edits no weights; EasyEdit's files give []")
    r.ignore({"inner_params": "empty: SERAC edits no weights"})
    for key, allowed, what in (("square", (True,), "score exp(-d^2)"), ("cos", (False,), "Euclidean distance"),
                               ("cross_attend", (False,), "an embedding classifier"),
                               ("soft_weighting", (False,), "hard routing by threshold"),
                               ("dist_heads", (1,), "one distance head"), ("bound_embeds", (False,), "unbounded embeddings"),
                               ("use_all_negatives", (False,), "in-batch negatives"), ("checkpoint_grad", (False,), "no checkpointing"),
                               ("lora", (None,), "no LoRA"), ("dropout", (0, 0.0), "no dropout"),
                               ("train_base", (False,), "the base model is frozen"), ("no_grad_layers", (None,), "none"),
                               ("opt", ("Adam",), "Adam")):
        r.only(key, allowed, what)


_READERS: dict[str, Callable[[_Reader], None]] = {
    "rome": _rome, "memit": _memit, "pmet": _pmet, "ft": _ft, "kn": _kn, "grace": _grace, "mend": _mend, "serac": _serac,
}


def read_easyedit_hparams(path: str | Path, method: str | None = None) -> Converted:
    """Read an EasyEdit hparams YAML into editharm's Hparams of its method.

    The method comes from the file's `alg_name` (or `alg`, in EasyEdit's TRAINING files);
    `method` (editharm's name) is needed only when the file names none, and must agree
    when it does.
    """
    from editharm.methods import load_hparams, load_method

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"EasyEdit hyperparameter file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise EasyEditError(f"{path}: expected a mapping of EasyEdit hyperparameters")
    named = raw.get("alg_name") or raw.get("alg")
    if named is not None and str(named).upper() not in METHODS:
        raise EasyEditError(f"{path}: EasyEdit algorithm {named!r} is not one editharm reads; known: {', '.join(sorted(METHODS))}")
    from_file = METHODS[str(named).upper()] if named is not None else None
    if from_file and method and from_file != method:
        raise EasyEditError(f"{path}: the file is for {named} but method {method!r} was asked for")
    method = from_file or method
    if method is None:
        raise EasyEditError(f"{path}: no alg_name/alg in the file; pass the method ({', '.join(sorted(_READERS))})")
    if method not in _READERS:
        raise EasyEditError(f"{path}: editharm reads EasyEdit files for {', '.join(sorted(_READERS))}, not {method!r}")
    reader = _Reader(path, raw, method)
    reader.ignore(_IGNORED_ALL)
    reader.ignore(_IGNORED_TRAINER)
    _READERS[method](reader)
    unknown = sorted(set(raw) - set(reader.mapped) - set(reader.fixed) - set(reader.ignored))
    if unknown:
        raise EasyEditError(f"{path}: unknown EasyEdit key(s) for {method}: {', '.join(unknown)}; editharm does not know "
                            "what they do, so it will not guess (known keys are listed in editharm/easyedit.py)")
    hparams_cls = load_method(method).Hparams
    _numbers_from_strings(reader.values, hparams_cls)
    # Validated exactly as an editharm YAML file (names, types, ranges); messages name the EasyEdit file.
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / f"{method}.yaml"
        converted.write_text(yaml.safe_dump(reader.values))
        try:
            hparams = load_hparams(converted, hparams_cls)
        except ValueError as e:
            where = f"{path} (EasyEdit, as editharm {method} hyperparameters)"
            message = str(e)
            raise EasyEditError(message.replace(str(converted), where) if str(converted) in message
                                else f"{where}: {message}") from None
    return Converted(path, method, hparams, reader.mapped, reader.fixed, reader.ignored)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _numbers_from_strings(values: dict[str, Any], cls: type) -> None:
    """EasyEdit writes learning rates as 5e-1 and 1e-6, which YAML 1.1 (PyYAML) reads as
    strings, not numbers (it wants a dot: 5.0e-1). EasyEdit means the number, so a float
    field given such a string gets its value."""
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key)
        floats = hint is float or float in typing.get_args(hint)
        if floats and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            values[key] = float(value)


def is_easyedit_file(path: str | Path) -> bool:
    """Does this YAML look like EasyEdit's (it names its algorithm), not editharm's?"""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and ("alg_name" in raw or "alg" in raw)
