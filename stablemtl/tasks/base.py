"""The `Task` contract: how one dense-prediction task meets the VAE, the metrics and the eye.

Conventions shared by every task (all tensors are torch, float32 unless stated):

- ``label``: ``(C, H, W)`` or batched ``(B, C, H, W)`` in the task's native units
  (depth in metres, normals unit camera-space vectors, semantic class ids as int64 with
  ``IGNORE_INDEX`` for unlabelled pixels, flows in pixels / metres, albedo and shading in [0, 1]).
- ``valid``: ``(H, W)`` or ``(B, H, W)`` bool. Non-finite label values are always treated as invalid.
- ``image3``: ``(3, H, W)`` or ``(B, 3, H, W)`` in [-1, 1], the label drawn as an RGB image for the VAE.
- ``prediction``: what ``decode`` returns, in the task's output space (see each task).
- ``encode`` and ``decode`` keep the batchedness of their input: unbatched in, unbatched out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IGNORE_INDEX = 255


class Task(ABC):
    """One dense-prediction task of the toolkit, and the one home of its facts.

    Subclasses set the class attributes and implement ``encode``, ``decode`` and ``visualize``;
    flips, latent masks, the constant baseline and ``metrics`` have defaults. ``register_task`` checks
    the required facts (``name``, ``prompt``, ``label_channels``, ``prediction_channels``,
    ``output_space``, ``primary_metric``, ``higher_is_better``).
    """

    name: ClassVar[str]
    prompt: ClassVar[str]
    label_channels: ClassVar[int]
    # dtype of a label tensor in a Sample: float32, or int64 class ids (stored as uint8 on disk).
    label_dtype: ClassVar[torch.dtype] = torch.float32
    # ``decode`` returns (B, prediction_channels, H, W) of prediction_dtype; an integer dtype marks
    # a discrete task (class ids), which is resized by nearest neighbour and never interpolated.
    prediction_channels: ClassVar[int]
    prediction_dtype: ClassVar[torch.dtype] = torch.float32
    # One line for model cards: the shape written "(B,C,H,W)" with C = prediction_channels, then
    # dtype, range and meaning of the prediction.
    output_space: str
    # Discrete tasks: one name per class id, and the id of unlabelled pixels.
    class_names: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX
    needs_pair: ClassVar[bool] = False
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    # The evaluation accumulator family that scores the task ("depth", "semantic", ... registered in
    # stablemtl.evaluation); None: the mean over images of ``metrics``.
    metric_family: ClassVar[str | None] = None
    # The trivial baseline: this value per prediction channel at every pixel (None: no baseline).
    baseline_constant: ClassVar[tuple[float, ...] | None] = None
    # Sign applied to each label channel under a horizontal / vertical flip (e.g. -1 on u for flow).
    hflip_signs: ClassVar[tuple[float, ...] | None] = None
    vflip_signs: ClassVar[tuple[float, ...] | None] = None

    @property
    def is_discrete(self) -> bool:
        """True when predictions are class ids (an integer ``prediction_dtype``)."""
        return not self.prediction_dtype.is_floating_point

    @abstractmethod
    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``label`` as a 3-channel image in [-1, 1]; return it and the (possibly shrunk) valid mask."""

    @abstractmethod
    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """Turn a decoded 3-channel image in about [-1, 1] into a prediction in the output space."""

    @abstractmethod
    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Render one unbatched prediction as a PIL image a person can read."""

    # ----------------------------------------------------------------------------------------------
    def flip(self, label: torch.Tensor, horizontal: bool = True) -> torch.Tensor:
        """Flip a ``(.., C, H, W)`` label, changing the sign of the channels that flip with the image."""
        flipped = label.flip(-1 if horizontal else -2)
        signs = self.hflip_signs if horizontal else self.vflip_signs
        if signs is None:
            return flipped
        shape = [1] * flipped.dim()
        shape[-3] = len(signs)
        return flipped * torch.tensor(signs, dtype=flipped.dtype, device=flipped.device).view(shape)

    def baseline_prediction(self, labels: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
        """The constant a trivial predictor outputs at every pixel: ``(prediction_channels,)`` tensor of
        ``prediction_dtype``, the value every trained model must beat.

        ``labels`` are ``(label (C, H, W), valid (H, W))`` pairs of the training set, for tasks whose best
        constant depends on the data (semantic: the majority class); this default returns
        ``baseline_constant`` without reading them. A task without a baseline raises ValueError.
        """
        if self.baseline_constant is None:
            raise ValueError(f"task {self.name!r} defines no constant baseline (set baseline_constant)")
        return torch.tensor(self.baseline_constant, dtype=self.prediction_dtype)

    def metrics(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
        """Per-image metrics of one unbatched ``prediction`` against ``label`` at the label's resolution.

        Used when ``metric_family`` is None (the built-in tasks name data-set accumulators of
        ``stablemtl.evaluation`` instead); the evaluator averages the values over images.
        """
        raise NotImplementedError(f"task {self.name!r} defines no metrics")

    def latent_valid_mask(self, valid: torch.Tensor, factor: int = 8) -> torch.Tensor:
        """A latent cell is valid only if every pixel under it is: ``(.., H, W) -> (.., H/f, W/f)`` bool."""
        return latent_valid_mask(valid, factor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def latent_valid_mask(valid: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Max-pool the invalid mask by ``factor`` and invert it (``(.., H, W)`` bool, H and W divisible)."""
    if valid.shape[-1] % factor or valid.shape[-2] % factor:
        raise ValueError(
            f"mask size {tuple(valid.shape[-2:])} is not a multiple of the latent factor {factor}"
        )
    lead = valid.shape[:-2]
    invalid = (~valid.bool()).float().reshape(-1, 1, *valid.shape[-2:])
    pooled = F.max_pool2d(invalid, kernel_size=factor, stride=factor)
    return (pooled < 0.5).reshape(*lead, *pooled.shape[-2:])


def batched(
    label: torch.Tensor, valid: torch.Tensor, channels: int | None = None, dtype: torch.dtype | None = None
):
    """Return ``(label[B,C,H,W], valid[B,H,W], was_batched)`` after checking types and shapes (ValueError
    naming ``label`` / ``valid`` otherwise); ``label`` is cast to ``dtype`` when given."""
    for name, value in (("label", label), ("valid", valid)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dtype is not None:
        label = label.to(dtype)
    if label.dim() not in (3, 4):
        raise ValueError(f"label must be (C, H, W) or (B, C, H, W), got shape {tuple(label.shape)}")
    was_batched = label.dim() == 4
    label = label if was_batched else label.unsqueeze(0)
    valid = valid if valid.dim() == 3 else valid.unsqueeze(0)
    if channels is not None and label.shape[1] != channels:
        raise ValueError(f"label must have {channels} channel(s), got {label.shape[1]}")
    if valid.shape != (label.shape[0], *label.shape[-2:]):
        raise ValueError(f"valid mask shape {tuple(valid.shape)} does not match label {tuple(label.shape)}")
    finite = torch.isfinite(label).all(dim=1) if label.is_floating_point() else torch.ones_like(valid)
    return label, valid.bool() & finite, was_batched


def batched_image3(image3: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return ``(image3[B,3,H,W], was_batched)`` after checking it is a float 3-channel image."""
    if not isinstance(image3, torch.Tensor) or not image3.is_floating_point():
        raise ValueError(f"image3 must be a float tensor, got {getattr(image3, 'dtype', type(image3))}")
    if image3.dim() not in (3, 4) or image3.shape[-3] != 3:
        raise ValueError(f"image3 must be (3, H, W) or (B, 3, H, W), got shape {tuple(image3.shape)}")
    was_batched = image3.dim() == 4
    return (image3 if was_batched else image3.unsqueeze(0)), was_batched


def unbatch(tensor: torch.Tensor, was_batched: bool) -> torch.Tensor:
    """Undo the leading batch dimension added by ``batched`` / ``batched_image3`` for unbatched inputs."""
    return tensor if was_batched else tensor.squeeze(0)


def single_prediction(prediction: torch.Tensor, channels: int) -> torch.Tensor:
    """Accept one prediction as ``(C, H, W)``, ``(1, C, H, W)`` or, for one channel, ``(H, W)``.

    Returns a detached CPU ``(C, H, W)`` tensor; raises ValueError naming ``prediction`` otherwise.
    """
    if not isinstance(prediction, torch.Tensor):
        raise ValueError(f"prediction must be a torch.Tensor, got {type(prediction).__name__}")
    pred = prediction.detach().cpu()
    if pred.dim() == 2 and channels == 1:
        pred = pred.unsqueeze(0)
    elif pred.dim() == 4 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.dim() != 3 or pred.shape[0] != channels:
        expected = "(1, H, W) or (H, W)" if channels == 1 else f"({channels}, H, W)"
        raise ValueError(
            f"prediction must be one unbatched {expected} map, got shape {tuple(prediction.shape)}"
        )
    return pred


def to_pil_rgb(rgb: np.ndarray | torch.Tensor) -> Image.Image:
    """An ``(H, W, 3)`` float image in [0, 1] (values outside are clipped) as an 8-bit RGB PIL image."""
    array = rgb.numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) image, got shape {array.shape}")
    array = np.nan_to_num(array.astype(np.float64), nan=0.0)
    return Image.fromarray(np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))
