"""The registry of tasks by name: ``get_task("depth")``; a new task registers with ``register_task``."""

from __future__ import annotations

import torch

from stablemtl.tasks.base import Task

_REGISTRY: dict[str, Task] = {}
# The facts every task must state, with their type; the rest of the toolkit reads them from the task.
_REQUIRED = {
    "name": str,
    "prompt": str,
    "label_channels": int,
    "prediction_channels": int,
    "output_space": str,
    "primary_metric": str,
    "higher_is_better": bool,
}


def check_task_facts(task: Task) -> None:
    """Raise ValueError naming the first missing or malformed fact of ``task``."""
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task instance, got {type(task).__name__}")
    for fact, kind in _REQUIRED.items():
        value = getattr(task, fact, None)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
            what = "a positive int" if kind is int else f"a {kind.__name__}"
            raise ValueError(f"{type(task).__name__}.{fact} must be {what}, got {value!r}")
    for fact in ("label_dtype", "prediction_dtype"):
        value = getattr(task, fact)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"{type(task).__name__}.{fact} must be a torch.dtype, got {value!r}")
    if task.is_discrete and len(task.class_names) < 2:
        raise ValueError(f"{type(task).__name__} predicts class ids: class_names must name 2+ classes")
    constant = task.baseline_constant
    if constant is not None and len(constant) != task.prediction_channels:
        raise ValueError(
            f"{type(task).__name__}.baseline_constant has {len(constant)} values for "
            f"{task.prediction_channels} prediction channel(s)"
        )


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (a name may be registered once) after checking its facts."""
    check_task_facts(task)
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task (used by tests that add a toy task)."""
    _REGISTRY.pop(name, None)


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"task {name!r} is unknown; known: {', '.join(_REGISTRY)}") from None


def task_names() -> list[str]:
    """Names of every registered task, in registration order."""
    return list(_REGISTRY)


def check_tasks(names) -> list[str]:
    """Validate a list of task names (a single string is accepted); return it as a list."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("at least one task is required")
    for name in names:
        get_task(name)
    if len(set(names)) != len(names):
        raise ValueError(f"tasks must not repeat: {names}")
    return names
