"""Attention-guided task masking: during training, hide some auxiliary tasks from the task attention.

StableMTL paper §3.3 (task attention) trains the 1-to-N attention with a regulariser: with probability
``ratio`` (0.4) per layer and forward pass, one or more auxiliary tasks are removed from the keys, chosen by
how much attention they receive, so that the main stream cannot lean on a single auxiliary task. Modes:

- ``attn_prob``: one task drawn with probability proportional to its mean attention weight;
- ``random``: one task drawn uniformly;
- ``highest``: the task with the highest mean attention weight;
- ``attn_prob_random_k``: ``k ~ U{1, ..., n-1}`` tasks drawn without replacement, proportional to their
  mean attention weight (``n`` = the tasks the row can see).

The official code masks the same tasks for every row of the batch (``per_batch=True`` here); by default the
decision is taken per sample (per main-stream row), from that sample's own attention weights. A row always
keeps at least one task. All draws come from ``generator`` (a CPU ``torch.Generator``), so a seeded run
masks the same tasks again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASKING_MODES = ("attn_prob", "random", "highest", "attn_prob_random_k")


@dataclass
class TaskMasking:
    """Settings and random source of the task masking (training only).

    Args:
        ratio: probability in [0, 1] that a row (or the batch, with ``per_batch``) is masked at a layer.
        mode: one of ``MASKING_MODES``.
        per_batch: one decision for the whole batch (the official behaviour) instead of one per row.
        generator: CPU generator for every draw; a fresh unseeded one when None.
    """

    ratio: float = 0.4
    mode: str = "attn_prob"
    per_batch: bool = False
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.ratio) <= 1.0:
            raise ValueError(f"ratio must lie in [0, 1], got {self.ratio}")
        if self.mode not in MASKING_MODES:
            raise ValueError(f"mode {self.mode!r} is unknown; known: {', '.join(MASKING_MODES)}")
        if self.generator is None:
            self.generator = torch.Generator()
        elif self.generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator (the draws are tiny, taken on the CPU)")

    @property
    def needs_probabilities(self) -> bool:
        """Whether ``choose`` reads the attention weights (all modes but ``random``)."""
        return self.mode != "random"

    def select_rows(self, available: torch.Tensor) -> torch.Tensor:
        """``available [R, A]`` bool (the keys each row may see) -> ``[R]`` bool: rows masked at this layer.

        Rows that see fewer than two tasks are never masked (masking would leave nothing to attend to)."""
        available = available.cpu()
        rows = available.shape[0]
        draws = torch.rand(1 if self.per_batch else rows, generator=self.generator)
        selected = (draws < self.ratio).expand(rows) if self.per_batch else draws < self.ratio
        return selected & (available.sum(dim=1) >= 2)

    def choose(
        self, probabilities: torch.Tensor | None, available: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Pick the tasks to hide.

        Args:
            probabilities: ``[R, A]`` mean attention weight of each key per row (over pixels and heads), or
                None for ``random``.
            available: ``[R, A]`` bool, keys each row may see.
            rows: ``[R]`` bool from ``select_rows``.

        Returns:
            ``[R, A]`` bool on the CPU, True where the key is hidden; every row keeps at least one key.
        """
        available = available.cpu()
        rows = rows.cpu()
        if probabilities is None:
            if self.needs_probabilities:
                raise ValueError(f"mode {self.mode!r} needs the attention probabilities")
            weights = available.float()
        else:
            weights = probabilities.detach().float().cpu() * available
        drop = torch.zeros_like(available)
        if not bool(rows.any()):
            return drop
        if self.per_batch:
            # One choice for the batch from the batch-mean weights (official behaviour), applied to every
            # selected row that can see the chosen task.
            seen = available[rows].any(dim=0)
            mean = weights[rows].sum(dim=0) / available[rows].sum(dim=0).clamp(min=1)
            chosen = self._pick(mean, seen)
            drop[rows] = chosen & available[rows]
        else:
            for row in torch.nonzero(rows).flatten().tolist():
                drop[row] = self._pick(weights[row], available[row])
        # Never hide every key of a row: undo the drop where nothing would remain.
        empty = ~(available & ~drop).any(dim=1)
        drop[empty] = False
        return drop

    def _pick(self, weights: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """One row: ``weights [A]`` (zero where unavailable), ``available [A]`` -> ``[A]`` bool drop."""
        count = int(available.sum())
        drop = torch.zeros_like(available)
        if count == 0:
            return drop
        uniform = available.float()
        # Weights can all be zero (e.g. underflow); fall back to a uniform choice among available keys.
        weights = weights if float(weights.sum()) > 0 else uniform
        if self.mode == "highest":
            index = torch.where(available, weights, torch.full_like(weights, -1.0)).argmax()
            drop[index] = True
        elif self.mode in ("attn_prob", "random"):
            source = uniform if self.mode == "random" else weights
            drop[torch.multinomial(source, 1, generator=self.generator)] = True
        else:  # attn_prob_random_k
            k = int(torch.randint(1, max(count, 2), (1,), generator=self.generator))
            k = min(k, count - 1) if count > 1 else 1
            nonzero = int((weights > 0).sum())
            source = weights if nonzero >= k else uniform
            drop[torch.multinomial(source, k, replacement=False, generator=self.generator)] = True
        return drop
