"""The official learning-rate schedule, counted in optimizer steps (docs/training.md).

Linear warm-up from 0 to 1 over ``warmup_steps``, then exponential decay reaching ``final_ratio`` at
``total_steps`` and staying there. The official run warms up for 100 steps and decays over 25,000
steps but stops at 20,000 (final factor about 0.025); the official code stepped the schedule per
micro-batch with lengths multiplied by the accumulation steps, which is the same curve in optimizer
steps. Here the scheduler is stepped once per optimizer step. A run shorter than its warm-up (a smoke
test) simply stays in the warm-up.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_exponential_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """LR multiplier after ``step`` optimizer steps: ``step/warmup`` then ``final_ratio**progress``."""
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return final_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return math.exp(progress * math.log(final_ratio))


def get_warmup_exponential_scheduler(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.01
) -> LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_exponential_factor`; call ``step()`` per optimizer step."""
    if warmup_steps < 0:
        raise ValueError(f"lr_warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"lr_total_steps must be >= 1, got {total_steps}")
    if not 0 < final_ratio <= 1:
        raise ValueError(f"lr_final_ratio must be in (0, 1], got {final_ratio}")
    factor = partial(
        warmup_exponential_factor, warmup_steps=warmup_steps, total_steps=total_steps, final_ratio=final_ratio
    )
    return LambdaLR(optimizer, factor)
