"""Objectives of the shared training loop: one per model (see :mod:`.base`)."""

from stablemtl.training.objectives.base import Objective

__all__ = ["Objective"]
