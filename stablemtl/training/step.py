"""One micro-batch of training under ``accelerator.accumulate``: loss, backward, clip, step.

The optimizer only steps (and gradients are only clipped and all-reduced) on the last micro-batch of
an accumulation window; accelerate's wrappers make the other calls no-ops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from accelerate import Accelerator

from stablemtl.training.objectives.base import Objective


def micro_step(
    accelerator: Accelerator,
    modules: Mapping[str, torch.nn.Module],
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    groups: Sequence[dict],
    max_grad_norm: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train on one micro-batch; return ``(loss, grad_norm)``, ``grad_norm`` only on a sync step."""
    grad_norm = None
    with accelerator.accumulate(*modules.values()):
        with accelerator.autocast():
            loss = objective.loss(modules, groups)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            parameters = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
            grad_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm
