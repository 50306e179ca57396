"""The evaluation settings that change the numbers; every report records them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from stablemtl.evaluation.depth_metrics import DEPTH_ALIGNMENTS
from stablemtl.evaluation.flow_metrics import FLOW_ALIGNMENTS


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the metrics.

    Args:
        depth_alignment: ``"least_squares"`` (scale and shift in depth space, the default and the
            official protocol), ``"least_squares_disparity"`` or ``"none"`` (metric-depth models).
        min_depth, max_depth: valid ground-truth range in metres; aligned predictions are clipped to it.
        flow_alignment: ``"per_axis_scale"`` (non-negative per-axis scale per image, for models whose
            flow is normalised per axis, like StableMTL) or ``"none"`` (models predicting pixels).
        scene_flow_alignment: the same for scene flow (metres).
        scene_flow_official_and: also report the official code's AND-rule accuracies and outliers.
    """

    depth_alignment: str = "least_squares"
    min_depth: float = 1e-3
    max_depth: float | None = None
    flow_alignment: str = "per_axis_scale"
    scene_flow_alignment: str = "per_axis_scale"
    scene_flow_official_and: bool = False

    def __post_init__(self) -> None:
        if self.depth_alignment not in DEPTH_ALIGNMENTS:
            raise ValueError(
                f"depth_alignment {self.depth_alignment!r} is unknown; choose one of {DEPTH_ALIGNMENTS}"
            )
        for name in ("flow_alignment", "scene_flow_alignment"):
            if getattr(self, name) not in FLOW_ALIGNMENTS:
                value = getattr(self, name)
                raise ValueError(f"{name} {value!r} is unknown; choose one of {FLOW_ALIGNMENTS}")
        if self.min_depth <= 0 or (self.max_depth is not None and self.max_depth <= self.min_depth):
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)
