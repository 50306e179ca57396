"""The registry of tasks by name: ``get_task("depth")``; a new task registers with ``register_task``."""

from __future__ import annotations

from stablemtl.tasks.base import Task

_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (a name may be registered once)."""
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
