"""Δm, the multi-task performance against a reference (the formula of MTL-PSL and HiTT).

    Δm = (1/T) · Σ_t s_t · (M_t − M_ref,t) / M_ref,t · 100 %,   s_t = +1 if higher is better else −1,

where ``M_t`` is the primary metric of task ``t`` (``Task.primary_metric``, direction
``Task.higher_is_better``) and the sum runs over the T tasks that both the model and the reference
score. Positive Δm means better than the reference. The reference is by default the single-task
models trained by the same toolkit on the same data with the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from stablemtl.tasks import get_task

DELTA_M_FORMULA = (
    "Δm = (1/T) · Σ_t s_t · (M_t − M_ref,t) / M_ref,t · 100 %,  s_t = +1 if higher is better else −1"
)


def relative_gains(metrics: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """Signed relative difference in % per task common to both ``{task: primary metric}`` maps."""
    gains = {}
    for task_name, value in metrics.items():
        if task_name not in reference:
            continue
        ref = float(reference[task_name])
        if ref == 0 or not math.isfinite(ref):
            raise ValueError(f"reference of task {task_name!r} is {ref}; Δm needs a finite non-zero value")
        sign = 1.0 if get_task(task_name).higher_is_better else -1.0
        gains[task_name] = sign * (float(value) - ref) / abs(ref) * 100.0
    return gains


def delta_m(
    metrics: Mapping[str, float], reference: Mapping[str, float], tasks: Sequence[str] | None = None
) -> float:
    """Δm in % (formula in the module docstring) of ``{task: primary metric}`` against ``reference``.

    ``tasks`` restricts the mean to those tasks (each must be in both maps); by default every task
    present in both is used. Raises ``ValueError`` when no task is shared.
    """
    if tasks is not None:
        missing = [t for t in tasks if t not in metrics or t not in reference]
        if missing:
            raise ValueError(f"tasks {missing} are missing from the model metrics or from the reference")
        metrics = {t: metrics[t] for t in tasks}
    gains = relative_gains(metrics, reference)
    if not gains:
        raise ValueError(
            f"no task in common between the model ({sorted(metrics)}) and the reference ({sorted(reference)})"
        )
    return sum(gains.values()) / len(gains)
