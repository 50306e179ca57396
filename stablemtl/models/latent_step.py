"""The one latent step of StableMTL, shared by the pipelines, the training objectives and validation.

StableMTL (docs/architecture.md) regresses the latent of a task's label from image latents in a single
deterministic UNet call:

1. the frozen VAE encodes the frame ``z1``, the next frame ``z2`` (flow tasks; otherwise a fallback) and,
   in training, the label drawn as a 3-channel image; latents are posterior modes (= means) times
   ``vae.config.scaling_factor``;
2. the UNet sees ``cat[z1, z2, y_in]`` (3 x 4 channels) at a fixed timestep, conditioned on the task
   token, and predicts the label's latent directly (x0 prediction); ``y_in`` is zeros (deterministic)
   or standard normal noise;
3. the VAE decodes the predicted latent into the label image.

Everything that must agree between training and inference lives in :class:`LatentStepSettings`, which
both sides validate the same way and which a trained pipeline records in its config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor

from stablemtl.models.latent_cache import LatentCache

SECOND_FRAME_MODES = ("duplicate", "zero")
INPUT_NOISE_MODES = ("deterministic", "random")


@dataclass(frozen=True)
class LatentStepSettings:
    """Settings of the latent step that training and inference must share.

    Args:
        timestep: the fixed UNet timestep (999 in the paper's setting), in ``[0, num_train_timesteps)``.
        second_frame: second-frame latent of a sample without a frame pair (non-flow tasks, or flow tasks
            called without a next frame): ``"duplicate"`` (the first frame again, the official choice)
            or ``"zero"``.
        input_noise: the target slot ``y_in`` of the UNet input: ``"deterministic"`` (zeros, the paper's
            one-step regressor) or ``"random"`` (standard normal noise).
    """

    timestep: int = 999
    second_frame: str = "duplicate"
    input_noise: str = "deterministic"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if isinstance(self.timestep, bool) or not isinstance(self.timestep, int):
            raise ValueError(f"timestep must be an int, got {self.timestep!r}")
        if not 0 <= self.timestep < num_train_timesteps:
            raise ValueError(f"timestep={self.timestep} must lie in [0, {num_train_timesteps})")
        if self.second_frame not in SECOND_FRAME_MODES:
            raise ValueError(f"second_frame={self.second_frame!r} must be one of {SECOND_FRAME_MODES}")
        if self.input_noise not in INPUT_NOISE_MODES:
            raise ValueError(f"input_noise={self.input_noise!r} must be one of {INPUT_NOISE_MODES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LatentStep:
    """VAE encode/decode, the 12-channel UNet input and the timestep of the one-step regressor.

    Args:
        vae: the frozen ``AutoencoderKL``.
        settings: the :class:`LatentStepSettings` (timestep, second-frame fallback, input noise).
        cache: a :class:`~stablemtl.models.latent_cache.LatentCache` that :meth:`encode` serves images it
            met before from (training of a frozen VAE); None encodes every image.
    """

    def __init__(
        self, vae: AutoencoderKL, settings: LatentStepSettings | None = None, cache: LatentCache | None = None
    ):
        self.vae = vae
        self.settings = settings or LatentStepSettings()
        self.cache = cache

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    # -- VAE ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, vae_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(N, 3, H, W)`` images in [-1, 1] -> scaled posterior-mode latents ``(N, 4, H/8, W/8)``.

        ``vae_dtype``: the encoder's dtype when the caller knows it (saves a walk over the VAE's modules).
        """
        vae_dtype = self.vae.dtype if vae_dtype is None else vae_dtype

        def encoder(x: torch.Tensor) -> torch.Tensor:
            return self.vae.encode(x.to(vae_dtype)).latent_dist.mode() * self.scaling_factor

        return encoder(images) if self.cache is None else self.cache.encode(images, encoder)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, 4, h, w)`` -> images ``(N, 3, 8h, 8w)`` float32, about [-1, 1].

        SD's VAE overflows when decoding in float16 (its config says ``force_upcast``): such a VAE's
        decoder is moved to float32 once, on the first decode, and stays there (the encoder keeps its
        dtype). Nothing is cast back and forth per call.
        """
        decoder_dtype = self.vae.decoder.conv_in.weight.dtype
        if decoder_dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.decoder.to(torch.float32)
            self.vae.post_quant_conv.to(torch.float32)
            decoder_dtype = torch.float32
        scaled = latents.to(decoder_dtype) / self.scaling_factor
        return self.vae.decode(scaled, return_dict=False)[0].float()

    def round_trip(self, images: torch.Tensor) -> torch.Tensor:
        """``decode(encode(images))``: what a perfect UNet's output becomes, ``(N, 3, H, W)`` in [-1, 1]
        with ``H, W`` multiples of 8 (the ceiling row of a report, ``stablemtl.evaluation.oracle``)."""
        return self.decode(self.encode(images.to(self.vae.device)))

    # -- UNet -----------------------------------------------------------------------------------------
    def unet_input(
        self,
        first: torch.Tensor,
        second: torch.Tensor | None = None,
        has_pair: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """The UNet sample ``cat[z1, z2, y_in]`` ``(N, 12, h, w)`` from frame latents ``(N, 4, h, w)``.

        ``second`` holds the next frames' latents of the samples that have one; ``has_pair`` (``(N,)``
        bool, default all true when ``second`` is given) says which. The others get the
        ``second_frame`` fallback. ``generator`` draws ``y_in`` when ``input_noise="random"`` (the
        global RNG when None).
        """
        fallback = first if self.settings.second_frame == "duplicate" else torch.zeros_like(first)
        if second is None:
            z2 = fallback
        elif has_pair is None:
            z2 = second
        else:
            z2 = torch.where(has_pair.to(first.device)[:, None, None, None], second, fallback)
        if self.settings.input_noise == "random":
            y_in = randn_tensor(first.shape, generator=generator, device=first.device, dtype=first.dtype)
        else:
            y_in = torch.zeros_like(first)
        return torch.cat([first, z2, y_in], dim=1)

    def timesteps(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """The fixed timestep for ``batch_size`` samples, ``(N,)`` int64."""
        return torch.full((batch_size,), self.settings.timestep, device=device, dtype=torch.long)

    def predict(
        self,
        unet: torch.nn.Module,
        sample: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One UNet call: ``sample (N,12,h,w)`` and task tokens ``(N,L,D)`` -> x0 latents ``(N,4,h,w)``."""
        return unet(
            sample,
            self.timesteps(sample.shape[0], sample.device),
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            return_dict=False,
        )[0]
