"""One micro-batch of training under ``accelerator.accumulate``: encode, predict, loss, backward, step.

The optimizer only steps (and gradients are only clipped and all-reduced) on the last micro-batch of
an accumulation window; accelerate's wrappers make the other calls no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import Accelerator

from stablemtl.training.objective import StableMTLObjective


def micro_step(
    accelerator: Accelerator,
    unet: torch.nn.Module,
    objective: StableMTLObjective,
    optimizer: torch.optim.Optimizer,
    groups: Sequence[dict],
    max_grad_norm: float,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train on one micro-batch; return ``(loss, grad_norm)``, ``grad_norm`` only on a sync step."""
    grad_norm = None
    with accelerator.accumulate(unet):
        batch = objective.prepare(groups, dtype=dtype)
        with accelerator.autocast():
            loss = objective.loss(unet, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm
