"""A memo with a byte budget: keeps values until the budget is spent, then keeps no more.

Training reads the same rows and encodes the same images many times; the latent cache
(``stablemtl.models.latent_cache``) and the decoded-row cache of a source folder
(``stablemtl.data.loader``) keep them here. Nothing is evicted: a run's working set is either small
enough to keep (then every repeat hits) or it is not (then evicting would only trade one miss for another).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

logger = logging.getLogger(__name__)


class ByteBudgetMemo:
    """Values by key, up to ``max_bytes`` in all (the sizes the callers give); counts hits and misses.

    Args:
        max_bytes: the budget (> 0).
        name: what the memo holds, for the one log line when the budget is spent.
    """

    def __init__(self, max_bytes: int, name: str = "memo"):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.name = name
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._values: dict[Hashable, Any] = {}
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    @property
    def hit_rate(self) -> float:
        """The share of lookups answered so far (0 before any)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def get(self, key: Hashable) -> Any | None:
        """The value kept under ``key`` (a hit), or None (a miss)."""
        value = self._values.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Keep ``value`` (``size`` bytes) under ``key`` if the budget allows; True if it is kept."""
        if key in self._values:
            return True
        if self.bytes + size > self.max_bytes:
            if not self._full_logged:
                logger.info(
                    "%s full (%d entries, %.1f MB): later ones are computed every time",
                    self.name, len(self._values), self.bytes / 2**20,
                )  # fmt: skip
                self._full_logged = True
            return False
        self._values[key] = value
        self.bytes += size
        return True

    def summary(self) -> str:
        """One line for a log: hit rate, lookups, entries and bytes."""
        return (
            f"{self.name}: {100 * self.hit_rate:.0f} % of {self.hits + self.misses} lookups served from "
            f"memory ({len(self._values)} entries, {self.bytes / 2**20:.1f} MB)"
        )
