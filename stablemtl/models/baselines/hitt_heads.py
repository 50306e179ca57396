"""What HiTT needs to know about each task, as plain config: class counts, bins, output ranges, thresholds.

The models layer does not import the task registry; a task arrives as a name plus a ``HeadSpec`` (a JSON
dict in the saved ``config.json``). ``DEFAULT_HEADS`` holds the built-in tasks in their decode spaces
(see ``stablemtl.tasks``): class ids for semantic (8 Cityscapes classes) and semantic_nyud (NYUD-v2's 13,
the HiTT paper's benchmark), affine-invariant depth and shading in [0, 1], unit normals, albedo in [0, 1],
flows per-axis normalised in [-1, 1]. The training objective checks them against the registry.

Quantisation (HiTT paper §A.3): depth uses 30 log bins and normals 20 centres as on NYUD-v2 (the released
code uses 40 normal centres); the other regression tasks of this toolkit are quantised the same way
(albedo, scene flow: 4x4x4 grid refined by k-means; shading: 30 linear bins; optical flow: 8x8 grid).
Pseudo-label thresholds tau are the paper's NYUD-v2 one-label values (semantic 0.9, depth 0.45, normal
0.6); the tasks the paper does not have use 0.7, its value for regression tasks under random labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from stablemtl.models.baselines.quantization import CENTRE_INITS

KINDS = ("classification", "regression")
REGRESSION_LOSSES = ("l1", "cosine")


@dataclass(frozen=True)
class HeadSpec:
    """One task's head.

    Args:
        kind: "classification" (prediction = argmax class id, ``(B, 1, H, W)`` int64) or "regression"
            (prediction = soft-weighted sum of centres, ``(B, channels, H, W)`` float).
        num_bins: C_p, the number of classes or quantisation centres.
        channels: channels of the prediction (1 for class ids).
        init: starting centres of a regression task (``quantization.CENTRE_INITS``).
        low, high: output range; regression predictions are clamped to it (ignored for unit vectors).
        unit: the target is a unit vector (normals): max-cosine bin assignment, L2-normalised output.
        pair: the task needs the next frame (flows).
        tau: pseudo-label confidence threshold (HiTT paper Eq. 4).
        regression_loss: "l1" or "cosine" (1 - cos, the paper's angle loss for normals).
        regression_weight: lambda of the mixture loss (HiTT paper Eq. 10: 0.1).
        ignore_index: label value of unlabelled pixels of a classification task.
    """

    kind: str
    num_bins: int
    channels: int = 1
    init: str = "linear"
    low: float = 0.0
    high: float = 1.0
    unit: bool = False
    pair: bool = False
    tau: float = 0.7
    regression_loss: str = "l1"
    regression_weight: float = 0.1
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind {self.kind!r} is unknown; known: {', '.join(KINDS)}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
        if self.kind == "classification" and self.channels != 1:
            raise ValueError(f"a classification head predicts 1 channel of ids, got channels={self.channels}")
        if self.kind == "regression" and self.init not in CENTRE_INITS:
            raise ValueError(f"centre init {self.init!r} is unknown; known: {', '.join(CENTRE_INITS)}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(
                f"regression_loss must be one of {REGRESSION_LOSSES}, got {self.regression_loss!r}"
            )
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_HEADS: dict[str, HeadSpec] = {
    "semantic": HeadSpec("classification", num_bins=8, tau=0.9),
    "semantic_nyud": HeadSpec("classification", num_bins=13, tau=0.9),
    "depth": HeadSpec("regression", num_bins=30, init="log", tau=0.45),
    "normal": HeadSpec(
        "regression",
        num_bins=20,
        channels=3,
        init="sphere",
        low=-1.0,
        unit=True,
        tau=0.6,
        regression_loss="cosine",
    ),
    "albedo": HeadSpec("regression", num_bins=64, channels=3, init="grid"),
    "shading": HeadSpec("regression", num_bins=30, init="linear"),
    "optical_flow": HeadSpec("regression", num_bins=64, channels=2, init="grid", low=-1.0, pair=True),
    "scene_flow": HeadSpec("regression", num_bins=64, channels=3, init="grid", low=-1.0, pair=True),
}


def resolve_heads(tasks: Sequence[str | Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, HeadSpec]:
    """Task names and/or head specs -> ``{name: HeadSpec}`` in the given order.

    Accepted: ``["depth", "normal"]`` (default heads), ``{name: HeadSpec or dict}``, or a list mixing names
    and dicts with a ``"name"`` key (the form saved in ``config.json``, whose key order JSON may sort).
    A dict may override only some fields of a built-in task's default (e.g. ``{"tau": 0.8}``).
    """
    if isinstance(tasks, str) or not isinstance(tasks, (Sequence, Mapping)):
        raise ValueError(f"tasks must be a list of names or a mapping name -> head spec, got {tasks!r}")
    if isinstance(tasks, Mapping):
        items = list(tasks.items())
    else:
        items = []
        for entry in tasks:
            if isinstance(entry, str):
                items.append((entry, None))
            elif isinstance(entry, Mapping) and "name" in entry:
                items.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
            else:
                raise ValueError(f"each task must be a name or a head spec with a 'name', got {entry!r}")
    heads: dict[str, HeadSpec] = {}
    for name, spec in items:
        if name in heads:
            raise ValueError(f"tasks must not repeat: {name!r}")
        if isinstance(spec, HeadSpec):
            heads[name] = spec
            continue
        base = DEFAULT_HEADS.get(name)
        if base is None and not spec:
            raise ValueError(
                f"task {name!r} has no default head; pass a head spec (known: {', '.join(DEFAULT_HEADS)})"
            )
        fields = {**(base.to_dict() if base else {}), **dict(spec or {})}
        try:
            heads[name] = HeadSpec(**fields)
        except TypeError as error:
            raise ValueError(f"head spec of task {name!r} is invalid: {error}") from None
    if not heads:
        raise ValueError("tasks must name at least one task")
    return heads
