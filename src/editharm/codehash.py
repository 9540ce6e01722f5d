"""Code fingerprints: which editharm code a job runs, found by static import analysis.

A job must rerun when the code it runs changes, and only then. What it runs is its
workflow script, the library functions the script calls and everything those import,
transitively. This module finds that set with `ast` alone (nothing is imported, so no
torch at DAG-build time) and hashes it.

Precision is per top-level definition, not per file, because the library shares
modules: methods/base.py imports covariance.py, which imports `right_pad` from
prompts.py, so every method "imports prompts.py"; yet KN never runs the context
templates that a ROME change to prompts.py touches. What a module contributes is
its module-level code (imports, constants, decorators: it runs on import) plus the
top-level functions and classes reached from the names imported from it, following
names used inside reached definitions. `import pkg.mod`, `from pkg import mod` and a
module given as a whole (a method or task module, found dynamically by name) reach
every definition in it, with one narrowing: a module bound at module level by
`from pkg import mod [as m]` and used only as `m.name` reaches those names (a notebook's
`F.li_fig5(...)` reaches li_fig5, not every figure of editharm.figures).

A module-level binding that nothing in its module uses, an import or an assignment that
calls nothing (a re-export, a registry such as FIGURES), is code only where it is used:
its module-level text is hashed, but what it names is reached only when an importer
asks for it. So a package's __init__ can re-export every submodule's names without
making each importer depend on all of them.

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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

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
        # Bindings that only export a name count where the name is used (see the module docstring);
        # the rest of the module-level code runs on import, and so do decorators and class bases.
        self._exports = _export_only(self.module_level, self.defs, self._uses.values())
        self._export_uses = {name: _names_used(stmt) for name, stmt in self._exports.items()}
        exported = {id(stmt) for stmt in self._exports.values()}
        self._always = [stmt for stmt in self.module_level if id(stmt) not in exported]
        self._used_on_import = set().union(*map(_names_used, self._always), set(), *(
            _names_used(d) for node in self.defs.values() for d in getattr(node, "decorator_list", [])))
        self._module_imports = [(id(stmt) in exported, i) for stmt in self.module_level for i in _imports_in(stmt)]
        self._needed: dict[frozenset[str], frozenset[str]] = {}
        self._reached: dict[frozenset[str] | None, list[str]] = {}

    def package(self) -> str:
        """The package relative imports start from (only meaningful for editharm modules)."""
        if self.path.name == "__init__.py":
            return self.label
        return self.label.rpartition(".")[0]

    def needed(self, names: frozenset[str] | None) -> frozenset[str] | None:
        """Every top-level name used by importing this module and using `names` (None: all of them):
        definitions, and export-only bindings with what they name."""
        if names is None:
            return None
        if names not in self._needed:
            todo, seen = set(names) | self._used_on_import, set()
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                todo |= self._uses.get(name) or self._export_uses.get(name) or set()
            self._needed[names] = frozenset(seen)
        return self._needed[names]

    def reached(self, names: frozenset[str] | None) -> list[str]:
        """Top-level definitions run by importing this module and using `names`."""
        if names not in self._reached:
            needed = self.needed(names)
            self._reached[names] = sorted(self.defs if needed is None else needed & self.defs.keys())
        return self._reached[names]

    def imports(self, names: frozenset[str] | None) -> list[_Imports]:
        """The imports that run on importing this module and using `names`: module-level code (an
        export-only import marks its unneeded names), then the reached definitions' imports."""
        needed = self.needed(names)
        # What `m` of `from pkg import mod as m` is used for, in the code that runs.
        running = [*self._always, *(self.defs[n] for n in self.reached(names)),
                   *(s for n, s in self._exports.items() if needed is None or n in needed)]
        attributes = _attribute_uses(running)
        found = []
        for exported, (module, level, imported) in self._module_imports:
            if imported is not None:
                if exported:  # a re-export: only its needed names
                    imported = tuple((item, None if needed is None or bound in needed else frozenset())
                                     for item, bound in imported)
                else:  # a module used only as m.name: those names; used otherwise or not at all: all of it
                    imported = tuple((item, attributes.get(bound)) for item, bound in imported)
            found.append((module, level, imported))
        for n in self.reached(names):
            found += [(m, level, None if imported is None else tuple((item, None) for item, _ in imported))
                      for m, level, imported in self._imports[n]]
        return found

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


# (module, level, items): items None for `import module`; else per imported name, in _imports_in
# the name it is bound to, in _Module.imports what is used of it: None all of it, else a
# frozenset of its attributes (empty: the name is not used, only its module runs).
_Imports = tuple[str, int, "tuple[tuple[str, Any], ...] | None"]


def _imports_in(node: ast.AST) -> list[_Imports]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            found += [(alias.name, 0, None) for alias in sub.names]
        elif isinstance(sub, ast.ImportFrom):
            found.append((sub.module or "", sub.level, tuple((a.name, a.asname or a.name) for a in sub.names)))
    return found


def _bound_names(stmt: ast.stmt) -> frozenset[str]:
    """The names a module-level `from m import ...` or an assignment that calls nothing binds; else none."""
    if isinstance(stmt, ast.ImportFrom) and all(a.name != "*" for a in stmt.names):
        return frozenset(a.asname or a.name for a in stmt.names)
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if all(isinstance(t, ast.Name) for t in targets) and not any(
                isinstance(n, ast.Call) for n in ast.walk(stmt.value)):
            return frozenset(t.id for t in targets)
    return frozenset()


def _export_only(module_level: list[ast.stmt], defs: Mapping[str, ast.stmt],
                 def_uses: Iterable[set[str]]) -> dict[str, ast.stmt]:
    """Module-level bindings (see _bound_names) of names that no definition and no other module-level
    statement uses, by bound name: they only export the name. Used by another binding, a binding
    is export-only when that one is; a name bound twice is not."""
    bindings = {id(stmt): (stmt, _bound_names(stmt)) for stmt in module_level}
    bindings = {k: v for k, v in bindings.items() if v[1]}
    counts = Counter([name for _, names in bindings.values() for name in names] + list(defs))
    twice = {name for name, n in counts.items() if n > 1}
    used = set().union(set(), *def_uses, *(_names_used(s) for s in module_level if id(s) not in bindings))
    changed = True
    while changed:
        changed = False
        for key, (stmt, names) in list(bindings.items()):
            if names & (used | twice):
                del bindings[key]
                used |= _names_used(stmt)
                changed = True
    return {name: stmt for stmt, names in bindings.values() for name in names}


def _attribute_uses(nodes: Iterable[ast.AST]) -> dict[str, frozenset[str] | None]:
    """Per name used in `nodes`: the attributes read from it (`name.attr`), or None where the name is
    also used otherwise (called, passed on, assigned, given to getattr)."""
    attributes: dict[str, set[str]] = {}
    through_attribute, other = set(), set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Load) and isinstance(sub.value, ast.Name):
                attributes.setdefault(sub.value.id, set()).add(sub.attr)
                through_attribute.add(id(sub.value))
        other |= {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and id(sub) not in through_attribute}
    return {**{name: frozenset(found) for name, found in attributes.items()}, **dict.fromkeys(other)}


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
                    todo.append(Entry(file_entry(sibling).label, str(sibling.resolve()), frozenset(item for item, _ in imported) if imported else None))
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
            for item, used in imported:
                if item != "*" and module_file(f"{name}.{item}") is not None:
                    # `from pkg import module`: all of it, or the names read from it (none: its module-level code)
                    todo.append(module_entry(f"{name}.{item}", used))
                elif used != frozenset():  # an unneeded re-export: its module runs, the name is not used
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
