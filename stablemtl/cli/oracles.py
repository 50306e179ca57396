"""The oracle rows every report carries: ``encoding`` (a perfect model, task encoding only) and
``ceiling`` (a perfect UNet: the encoding plus the base's VAE round trip); docs/evaluation.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stablemtl.evaluation.oracle import LabelOracle
from stablemtl.models.latent_step import LatentStep

ENCODING_ROW = "encoding (perfect model, no VAE)"
CEILING_ROW = "ceiling (perfect UNet, VAE round trip)"


def oracle_predictors(models: Mapping[str, Any]) -> dict[str, LabelOracle]:
    """The encoding row and, when a model has a VAE (``.vae``), the ceiling row of the first such model's
    base. Models on different bases would need a ceiling each: pass them one base at a time."""
    oracles = {ENCODING_ROW: LabelOracle()}
    vae = next((m.vae for m in models.values() if getattr(m, "vae", None) is not None), None)
    if vae is not None:
        oracles[CEILING_ROW] = LabelOracle(round_trip=LatentStep(vae).round_trip)
    return oracles
