"""Method registry: a method is found by name, as a module, without any pipeline change.

`load_method("rome")` imports `editharm.methods.rome`. A method that lives outside
the package is named in config with its module path (`module: mylab.methods.foo`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from editharm.hparam_ranges import layer_problems, range_problem, spec_for

_SHARED_MODULES = {"base", "covariance", "prompts", "values"}
_REQUIRED = ("NAME", "Hparams", "SUPPORTS_BATCH", "EDITS_WEIGHTS", "apply")


class UnknownMethodError(ValueError):
    pass


def builtin_methods() -> list[str]:
    """Names of the methods shipped in editharm.methods."""
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in _SHARED_MODULES and not m.name.startswith("_"))


def load_method(name: str, module: str | None = None) -> types.ModuleType:
    """Import a method module and check it provides the interface of methods/base.py."""
    module_path = module or f"editharm.methods.{name}"
    try:
        mod = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        if module is None and e.name == module_path:
            raise UnknownMethodError(
                f"unknown editing method {name!r}. Known methods: {', '.join(builtin_methods())}. "
                "A method outside editharm is named with `module:` in its config entry."
            ) from e
        raise
    missing = [attr for attr in _REQUIRED if not hasattr(mod, attr)]
    if missing:
        raise UnknownMethodError(f"module {module_path} is not an editing method: it lacks {', '.join(missing)} (see editharm/methods/base.py)")
    return mod


def load_hparams(path: str | Path, cls: type) -> Any:
    """Read a hyperparameter YAML into the method's dataclass, checking names and types.

    Errors name the file, the key, the bad value and what is allowed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"hyperparameter file {path} does not exist (expected configs/methods/<method>/<family>.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameter names to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown hyperparameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{path}: missing hyperparameter(s) {', '.join(missing)}")
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(path, key, value, hints[key])
    method, module = _owner(cls)
    problems = [p for key, value in values.items()
                if (p := range_problem(path, key, value, spec_for(method, module, key), method))]
    if problems:
        raise ValueError("\n".join(problems))
    return cls(**values)


def hparams_layer_problems(path: str | Path, hparams: Any, n_layers: int, model: str) -> list[str]:
    """Layer indices in a loaded hyperparameter set that a model with `n_layers` layers lacks."""
    method, module = _owner(type(hparams))
    return layer_problems(path, hparams, method, module, n_layers, model)


def _owner(cls: type) -> tuple[str, types.ModuleType | None]:
    """The method (NAME, module) whose Hparams class `cls` is."""
    module = sys.modules.get(cls.__module__)
    return getattr(module, "NAME", cls.__module__), module


def _coerce(path: Path, key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, key, value, arg)
            except ValueError:
                continue
        raise ValueError(f"{path}: hyperparameter {key}={value!r} should be one of {hint}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ValueError(f"{path}: hyperparameter {key}={value!r} should be a list")
        inner = args[0] if args else Any
        items = [_coerce(path, key, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads an exponent without a dot, such as 5e-1, as a string.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{path}: hyperparameter {key}={value!r} should be a number")
    if hint in (int, str, bool) and not (type(value) is hint):
        raise ValueError(f"{path}: hyperparameter {key}={value!r} should be {hint.__name__}")
    return value
