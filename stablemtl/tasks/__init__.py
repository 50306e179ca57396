"""Tasks: how each label becomes a 3-channel image for the VAE and back, with masks and visualisers.

The built-in tasks register themselves on import: the paper's seven (``PAPER_TASKS``) and
``semantic_nyud`` (NYUD-v2's 13-class semantics). A new task is one new module that defines a ``Task``
subclass and calls ``register_task`` (plus one import line below).
"""

from stablemtl.tasks.base import IGNORE_INDEX, Task, latent_valid_mask
from stablemtl.tasks.registry import check_tasks, get_task, register_task, task_names, unregister_task

# Registration order is the official task order of the sampler (docs/training.md): import order matters.
# isort: off
from stablemtl.tasks import albedo, shading, depth, normal, semantic, optical_flow, scene_flow  # noqa: F401
from stablemtl.tasks import semantic_nyud  # noqa: F401  (after the paper's seven: it is no paper task)
# isort: on

# The StableMTL paper's seven tasks, in registration order: what "all tasks" means for a fresh pipeline.
# task_names() also lists every other registered task (semantic_nyud, a user's own).
PAPER_TASKS: tuple[str, ...] = (
    "albedo",
    "shading",
    "depth",
    "normal",
    "semantic",
    "optical_flow",
    "scene_flow",
)

__all__ = [
    "IGNORE_INDEX",
    "PAPER_TASKS",
    "Task",
    "check_tasks",
    "get_task",
    "latent_valid_mask",
    "register_task",
    "task_names",
    "unregister_task",
]
