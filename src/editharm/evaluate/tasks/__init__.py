"""Downstream tasks, one module each, found by name: `get_task("sst2")`."""

from __future__ import annotations

import importlib
import pkgutil

from editharm.evaluate.tasks.base import Task


def _task_classes() -> dict[str, type[Task]]:
    found: dict[str, type[Task]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Task) and obj is not Task and getattr(obj, "NAME", None):
                found[obj.NAME] = obj
    return found


def known_tasks() -> list[str]:
    return sorted(_task_classes())


def get_task(name: str) -> Task:
    classes = _task_classes()
    if name not in classes:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(classes))}")
    return classes[name]()


def suite(name: str) -> list[str]:
    return sorted(t for t, cls in _task_classes().items() if name in cls.SUITES)
