"""Tasks: how each label becomes a 3-channel image for the VAE and back, with masks and visualisers.

The seven built-in tasks register themselves on import; an eighth is one new module that defines a
``Task`` subclass and calls ``register_task`` (plus one import line below).
"""

from stablemtl.tasks.base import IGNORE_INDEX, Task, latent_valid_mask
from stablemtl.tasks.registry import check_tasks, get_task, register_task, task_names, unregister_task

# Registration order is the official task order of the sampler (docs/training.md): import order matters.
# isort: off
from stablemtl.tasks import albedo, shading, depth, normal, semantic, optical_flow, scene_flow  # noqa: F401
# isort: on

__all__ = [
    "IGNORE_INDEX",
    "Task",
    "check_tasks",
    "get_task",
    "latent_valid_mask",
    "register_task",
    "task_names",
    "unregister_task",
]
