"""One order for evaluation samples drawn from several sources: round robin, one row of each in turn.

``make demo`` and ``stablemtl-eval`` both read their test folders in this order, so that the first
prediction grids show every source and, because bootstrap resamples are drawn over sample positions
(``stablemtl.evaluation.bootstrap``), a separate ``stablemtl-eval`` run on the demo's test folders pairs its
intervals with the demo's own reports.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


def interleaved_rows(sources: Sequence[Sequence[Any]], limit: int | None = None) -> Iterator[Any]:
    """Row 0 of every source, then row 1 of every source, ...; a shorter source drops out when it ends.
    ``limit`` caps the rows taken from each source."""
    counts = [len(s) if limit is None else min(len(s), limit) for s in sources]
    for index in range(max(counts, default=0)):
        for source, count in zip(sources, counts):
            if index < count:
                yield source[index]


def interleaved_count(sources: Sequence[Sequence[Any]], limit: int | None = None) -> int:
    """How many rows ``interleaved_rows(sources, limit)`` yields."""
    return sum(len(s) if limit is None else min(len(s), limit) for s in sources)
