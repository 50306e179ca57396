"""A memo of the frozen VAE encoder, keyed by the bytes of what it encodes.

Training encodes the same frames and labels again and again: every epoch, every task a frame serves, and
each of a row's flip states. Augmentations that draw continuous values (colour jitter, random crops)
give new inputs every time and never hit. The encoder is frozen, so a latent computed once stays right:
:class:`LatentCache` keeps each encoded image's latent, keyed by a hash of the image's bytes, shape and
dtype, until ``max_bytes`` of latents are held; later misses are encoded but not kept. A cached latent
equals a fresh encoding up to float rounding (a convolution's sums depend a little on the batch it ran in).

Hashing needs the input on the host: on a GPU each call copies its batch back, which the memo must earn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from stablemtl.utils.memo import ByteBudgetMemo


def content_key(image: torch.Tensor) -> bytes:
    """A 16-byte key of one tensor's values, shape and dtype (equal keys: equal tensors)."""
    host = image.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tuple(host.shape)}{host.dtype}".encode())
    digest.update(host.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


class LatentCache:
    """Latents of a frozen encoder, kept on the host up to ``max_bytes``; counts hits and misses.

    Args:
        max_bytes: the most latent bytes kept (> 0); once reached, new latents are no longer stored.
    """

    def __init__(self, max_bytes: int):
        self.memo = ByteBudgetMemo(max_bytes, "latent cache")

    def __len__(self) -> int:
        return len(self.memo)

    def encode(self, images: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``encoder(images)``, with the images met before served from the memo; the misses go to
        ``encoder`` in one call. Returns the latents in ``images``' order, on the encoder's device."""
        keys = [content_key(image) for image in images]
        kept = [self.memo.get(key) for key in keys]
        missing = [i for i, latent in enumerate(kept) if latent is None]
        if not missing:
            return torch.stack(kept).to(images.device)
        fresh = encoder(images[missing])
        out = fresh.new_empty((len(keys), *fresh.shape[1:]))
        out[missing] = fresh
        found = [i for i, latent in enumerate(kept) if latent is not None]
        if found:
            out[found] = torch.stack([kept[i] for i in found]).to(fresh.device, fresh.dtype)
        for row, i in enumerate(missing):
            latent = fresh[row].detach().to("cpu", copy=True)
            self.memo.put(keys[i], latent, latent.numel() * latent.element_size())
        return out
