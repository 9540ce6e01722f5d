"""Rule params that Snakemake compares by content, not by the order their keys were written in.

Snakemake reruns a job when the `repr` of one of its params differs from the one it
recorded. A dict's repr follows insertion order, which follows the YAML file, so a
re-dumped config (same values, other key order) would rerun the whole DAG. The Snakefile
wraps dict params in `Canonical`, whose repr is sorted-keys JSON. `Untracked` marks a
param that describes a run without changing its result (the config's file name):
Snakemake leaves it out of the comparison because it is not a builtin type.

Both exist on the Snakemake side only: a workflow script receives its params pickled, and
unpickles the plain value (a dict, the string), so the library never sees a wrapper
(yaml.safe_dump, for one, refuses dict subclasses).
"""

from __future__ import annotations

import copy
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """One text per value: keys sorted (as strings), tuples as lists, sets sorted."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), default=str)


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_normalise(v) for v in value), key=canonical_json)
    return value


class Canonical(dict):
    """A dict whose repr is its canonical JSON: equal content, equal repr, whatever the key order."""

    def __repr__(self) -> str:
        return f"Canonical({canonical_json(self)})"

    def __reduce__(self):
        return (dict, (dict(self),))  # unpickles as a plain dict

    # Copies stay canonical (pickling is what turns it into a plain dict, not copying).
    def __copy__(self) -> "Canonical":
        return Canonical(self)

    def __deepcopy__(self, memo: dict) -> "Canonical":
        return Canonical(copy.deepcopy(dict(self), memo))


class Untracked:
    """A param a job reads but whose change alone must not rerun the job."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"Untracked({self.value!r})"

    def __reduce__(self):
        return (copy.copy, (self.value,))  # unpickles as (a copy of) the value itself
