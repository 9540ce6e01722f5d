"""Code fingerprints: which editharm code a job runs, found by static import analysis.

A job must rerun when the code it runs changes, and only then. What it runs is its
workflow script, the library functions the script calls and everything those import,
transitively. This module finds that set with `ast` alone (nothing is imported, so no
torch at DAG-build time) and hashes it.

Precision is per top-level definition, not per file, because the library shares
modules: methods/base.py imports covariance.py, which imports `right_pad` from
values.py, so every method "imports values.py"; yet KN never runs the value
optimisation that a ROME change to values.py touches. What a module contributes is
its module-level code (imports, constants, decorators: it runs on import) plus the
top-level functions and classes reached from the names imported from it, following
names used inside reached definitions. `import pkg.mod`, `from pkg import mod` and a
module given as a whole (a method or task module, found dynamically by name) reach
every definition in it.

Imports done dynamically (importlib, registries such as get_task, load_method,
get_format) are not followed: the caller adds the module a job resolves to.

Public API:
  module_closure(name)              editharm modules a module imports, transitively
  code_fingerprint(module_names)    sha256 over module names and whole file bytes
  Entry, closure, fingerprint       the per-definition analysis the workflow uses
  write_fingerprint(path, entries)  a small JSON file, rewritten only when it changes
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

PACKAGE = "editharm"
_SRC = Path(__file__).resolve().parent.parent  # the folder that holds editharm/

ALL = None  # "every definition" in a closure: module -> frozenset of names, or ALL


@dataclass(frozen=True)
class Entry:
    """Code a job starts from: the file at `path`, known as `label`, with the top-level
    `names` it uses (None: all of them). editharm modules are labelled by dotted name."""

    label: str
    path: str
    names: frozenset[str] | None = None


def module_file(name: str) -> Path | None:
    """The source file of editharm module `name` (a .py file or a package's __init__.py)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_entry(name: str, names: Iterable[str] | None = None) -> Entry:
    path = module_file(name)
    if path is None:
        raise ValueError(f"{name!r} is not a module of {PACKAGE} (looked under {_SRC / PACKAGE})")
    return Entry(name, str(path), None if names is None else frozenset(names))


def file_entry(path: str | os.PathLike) -> Entry:
    """A script outside the package (a workflow script, a notebook's code cells, a method module of one's own),
    labelled by its folder and file name so that moving the checkout changes nothing."""
    path = Path(path).resolve()
    return Entry(f"{path.parent.name}/{path.name}", str(path))


class _Module:
    """One parsed source file: its module-level statements and its top-level definitions."""

    def __init__(self, entry_label: str, path: Path):
        self.label = entry_label
        self.path = path
        self.source = _notebook_code(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(self.source, filename=str(path))
        except SyntaxError as e:
            raise SyntaxError(f"{path}: cannot be parsed to find the code a job runs: {e}") from e
        self.defs: dict[str, ast.stmt] = {}
        self.module_level: list[ast.stmt] = []
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defs[stmt.name] = stmt
            elif not _is_type_checking_block(stmt):
                self.module_level.append(stmt)
        # One walk per top-level statement: the names it uses and the imports it makes.
        self._uses = {name: _names_used(node) for name, node in self.defs.items()}
        self._imports = {name: _imports_in(node) for name, node in self.defs.items()}
        # Module-level code runs on import, and so do decorators and class bases.
        self._used_on_import = set().union(*map(_names_used, self.module_level), set(), *(
            _names_used(d) for node in self.defs.values() for d in getattr(node, "decorator_list", [])))
        self._module_imports = [i for stmt in self.module_level for i in _imports_in(stmt)]
        self._reached: dict[frozenset[str] | None, list[str]] = {}

    def package(self) -> str:
        """The package relative imports start from (only meaningful for editharm modules)."""
        if self.path.name == "__init__.py":
            return self.label
        return self.label.rpartition(".")[0]

    def reached(self, names: frozenset[str] | None) -> list[str]:
        """Top-level definitions run by importing this module and using `names`."""
        if names not in self._reached:
            if names is None:
                self._reached[names] = sorted(self.defs)
            else:
                todo, seen = set(names) | self._used_on_import, set()
                while todo:
                    name = todo.pop()
                    if name in seen or name not in self.defs:
                        continue
                    seen.add(name)
                    todo |= self._uses[name] - seen
                self._reached[names] = sorted(seen)
        return self._reached[names]

    def imports(self, names: frozenset[str] | None) -> list[tuple[str, int, tuple[str, ...] | None]]:
        """(module, level, imported names or None for `import x`) in module-level code and reached definitions."""
        return self._module_imports + [i for n in self.reached(names) for i in self._imports[n]]

    def text(self, names: frozenset[str] | None) -> str:
        """What the fingerprint hashes: the whole file, or module-level code plus the reached definitions."""
        if names is None:
            return self.source
        parts = [self._lines(stmt) for stmt in self.module_level]
        parts += [self._lines(self.defs[n]) for n in self.reached(names)]
        return "".join(parts)

    def _lines(self, node: ast.stmt) -> str:
        """The source lines of a top-level statement, decorators included (whole lines: a
        top-level statement starts a line; ast.get_source_segment re-splits the file per call)."""
        if not hasattr(self, "_source_lines"):
            self._source_lines = self.source.splitlines(keepends=True)
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        return "".join(self._source_lines[start - 1: node.end_lineno])


def _notebook_code(path: Path) -> str:
    """A notebook's code cells as one Python source (IPython magics and shell lines commented out)."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a Jupyter notebook (no cells to read the code of): {e}") from e
    lines = []
    for cell in cells:
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            lines += [f"# {line}" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines()]
    return "\n".join(lines) + "\n"


def _is_type_checking_block(stmt: ast.stmt) -> bool:
    # `if TYPE_CHECKING:` imports never run; following them would invalidate too much.
    test = getattr(stmt, "test", None) if isinstance(stmt, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _imports_in(node: ast.AST) -> list[tuple[str, int, tuple[str, ...] | None]]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            found += [(alias.name, 0, None) for alias in sub.names]
        elif isinstance(sub, ast.ImportFrom):
            found.append((sub.module or "", sub.level, tuple(a.name for a in sub.names)))
    return found


_PARSED: dict[tuple[str, str, int, int], _Module] = {}


def _parse(label: str, path: str | Path) -> _Module:
    path = Path(path)
    st = path.stat()
    key = (label, str(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        _PARSED[key] = _Module(label, path)
    return _PARSED[key]


def _resolve(importer: _Module, module: str, level: int) -> str:
    if level == 0:
        return module
    base = importer.package().split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def closure(entries: Iterable[Entry]) -> dict[str, tuple[str, frozenset[str] | None]]:
    """Every file the entries run: label -> (path, reached names or None for all), transitively.

    Imports of editharm modules are followed; a script's imports of sibling files in its
    folder (workflow_scripts/_common.py) are followed too; anything else (torch, the
    standard library) is not code of this project.
    """
    found: dict[str, tuple[str, frozenset[str] | None]] = {}
    todo = list(entries)
    while todo:
        entry = todo.pop()
        old = found.get(entry.label)
        if old is not None:
            if old[1] is None or (entry.names is not None and entry.names <= old[1]):
                continue
            names = None if entry.names is None else entry.names | old[1]
        else:
            names = entry.names
        found[entry.label] = (entry.path, names)
        mod = _parse(entry.label, entry.path)
        for target, level, imported in mod.imports(names):
            if level == 0 and target.split(".")[0] != PACKAGE:
                sibling = Path(entry.path).parent / f"{target}.py"
                if "." not in target and not entry.label.startswith(PACKAGE) and sibling.is_file():
                    todo.append(Entry(file_entry(sibling).label, str(sibling.resolve()), frozenset(imported) if imported else None))
                continue
            name = _resolve(mod, target, level)
            if module_file(name) is None:
                continue
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first (their module-level code).
            parts = name.split(".")
            for i in range(1, len(parts)):
                todo.append(module_entry(".".join(parts[:i]), ()))
            if imported is None:
                todo.append(module_entry(name))
                continue
            plain = []
            for item in imported:
                if item != "*" and module_file(f"{name}.{item}") is not None:
                    todo.append(module_entry(f"{name}.{item}"))  # `from pkg import module`: all of it
                else:
                    plain.append(item)
            todo.append(module_entry(name, None if "*" in plain else plain))
    return found


def fingerprint(entries: Iterable[Entry]) -> tuple[str, dict[str, str]]:
    """(sha256 of the code the entries run, label -> sha256 of each file's part of it)."""
    parts = {}
    for label, (path, names) in sorted(closure(entries).items()):
        text = _parse(label, path).text(names)
        parts[label] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    total = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(parts.items())).encode()).hexdigest()
    return total, parts


def module_closure(module_name: str) -> list[str]:
    """The editharm modules `module_name` imports, transitively (itself included), sorted."""
    return sorted(label for label in closure([module_entry(module_name)]) if label.split(".")[0] == PACKAGE)


def code_fingerprint(module_names: Iterable[str]) -> str:
    """sha256 over the sorted module names and the bytes of their files (e.g. of a
    method's module_closure, to tell whether a saved partial state was made by this code)."""
    digest = hashlib.sha256()
    for name in sorted(set(module_names)):
        path = module_file(name)
        if path is None:
            raise ValueError(f"{name!r} is not a module of {PACKAGE} (looked under {_SRC / PACKAGE})")
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_fingerprint(path: str | os.PathLike, entries: Iterable[Entry], extra: Mapping[str, str] | None = None) -> str:
    """Write the fingerprint of `entries` (and of `extra` labelled hashes, e.g. of files
    that are not Python) as JSON at `path`, only when its content changes, so that its
    modification time moves exactly when the code does. Returns `path`."""
    from editharm.io import write_text

    total, parts = fingerprint(entries)
    if extra:
        parts = {**parts, **extra}
        total = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(parts.items())).encode()).hexdigest()
    text = json.dumps({"sha256": total, "files": parts}, indent=1, sort_keys=True) + "\n"
    path = Path(path)
    try:
        unchanged = path.read_text(encoding="utf-8") == text
    except OSError:
        unchanged = False
    if not unchanged:
        write_text(path, text)
    return str(path)
