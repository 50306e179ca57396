"""The benchmarks' one timer: variants interleaved round by round (the CPU is shared), medians reported.

Imported by the ``bench_*.py`` scripts, which run as ``python benchmarks/bench_x.py`` (this folder is then
on ``sys.path``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each variant: ``warmup`` untimed calls each, then ``rounds`` rounds that
    call every variant once, in order, so that a slow spell of the machine hits all of them alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
