"""Oracle rows of a report: what a *perfect* model would score once its output passes through the
task encoding (``encoding`` row) or through the encoding and the VAE (``ceiling`` row).

StableMTL never outputs a label directly: its UNet predicts the latent of the label drawn as a
3-channel image (``Task.encode``), the VAE decodes that latent and ``Task.decode`` reads the prediction
back. A perfect UNet therefore scores ``decode(vae_round_trip(encode(label)))``: the ceiling the base
model puts on every task. Without the VAE, ``decode(encode(label))`` shows what the encoding alone
costs (e.g. depth's 2/98 % quantile clipping). Both are scored by the same evaluator as every model
(docs/evaluation.md, "Ceiling and encoding rows").

The oracle needs the labels, which a ``Predictor`` never sees: it implements ``predict_samples(samples,
tasks)``, which the evaluator calls with the batch's Sample dicts instead of ``predict``. The VAE round
trip is any callable on ``(B, 3, H, W)`` images in [-1, 1] (e.g. ``LatentStep.round_trip``), so this
module needs no diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from stablemtl.tasks import check_tasks, get_task

RoundTrip = Callable[[torch.Tensor], torch.Tensor]


class LabelOracle:
    """Predicts each sample's own label, after the task encoding and an optional image round trip.

    Args:
        round_trip: ``(B, 3, H, W)`` in [-1, 1] -> same shape (about [-1, 1]); None: the encoding row.
            Images are padded (replicated borders) to a multiple of ``multiple`` pixels first and
            cropped back after (a VAE halves the size three times).
        tasks: the tasks it predicts (the evaluator skips the others); None: every task asked for.
        multiple: side multiple the round trip needs (8 for an SD VAE).
    """

    def __init__(
        self, round_trip: RoundTrip | None = None, tasks: Sequence[str] | None = None, multiple: int = 8
    ) -> None:
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.round_trip, self.multiple = round_trip, int(multiple)
        if tasks is not None:
            self.tasks = check_tasks(tasks)

    def predict(self, images, next_images, tasks) -> dict[str, torch.Tensor]:
        raise ValueError(
            "LabelOracle predicts from labels: the evaluator calls predict_samples(samples, tasks)"
        )

    @torch.no_grad()
    def predict_samples(
        self, samples: Sequence[Mapping[str, Any]], tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``{task: (B, C, H, W)}`` at the image size; a sample without the task's label gets zeros
        (the evaluator scores only labelled samples)."""
        height, width = samples[0]["image"].shape[-2:]
        out: dict[str, torch.Tensor] = {}
        for name in tasks:
            task = get_task(name)
            drawn, have = [], []
            for sample in samples:
                label = sample.get("labels", {}).get(name)
                if label is None:
                    drawn.append(torch.zeros(3, height, width))
                    continue
                valid = sample.get("valid", {}).get(name)
                valid = torch.ones(label.shape[-2:], dtype=torch.bool) if valid is None else valid
                image3, _ = task.encode(label.unsqueeze(0).float(), valid.unsqueeze(0))
                if tuple(image3.shape[-2:]) != (height, width):  # labels at another resolution
                    image3 = F.interpolate(image3, size=(height, width), mode="bilinear", align_corners=False)
                drawn.append(image3[0].float())
                have.append(len(drawn) - 1)
            images3 = torch.stack(drawn)
            if self.round_trip is not None and have:
                images3[have] = self._round_trip(images3[have])
            prediction = task.decode(images3)
            prediction[[i for i in range(len(samples)) if i not in have]] = 0
            out[name] = prediction
        return out

    def _round_trip(self, images3: torch.Tensor) -> torch.Tensor:
        height, width = images3.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        padded = F.pad(images3, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images3
        result = self.round_trip(padded)
        if tuple(result.shape) != tuple(padded.shape):
            raise ValueError(f"round_trip returned shape {tuple(result.shape)} for {tuple(padded.shape)}")
        return result[..., :height, :width].float().cpu()
