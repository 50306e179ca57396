"""The latent cache: a memo of the frozen VAE encoder keyed by the bytes of what it encodes."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from stablemtl.models.latent_cache import LatentCache, content_key
from stablemtl.models.latent_step import LatentStep
from stablemtl.testing import tiny_vae_config


class CountingEncoder:
    """A deterministic stand-in encoder that records the batches it was given."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(images.clone())
        return images[:, :, ::8, ::8].sum(1, keepdim=True).repeat(1, 4, 1, 1) * 0.5


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_only_images_never_met_reach_the_encoder_in_one_call_and_order_is_kept():
    encoder, cache = CountingEncoder(), LatentCache(2**20)
    seen, new = _images(3, 0), _images(2, 1)
    first = cache.encode(seen, encoder)
    torch.testing.assert_close(first, encoder(seen))
    encoder.batches.clear()

    mixed = torch.cat([new[:1], seen[2:], new[1:], seen[:1]])  # new, old, new, old
    out = cache.encode(mixed, encoder)
    (batch,) = encoder.batches  # one call, with the two new images only, in their order
    assert torch.equal(batch, new)
    assert torch.equal(out, encoder(mixed))
    assert (cache.memo.hits, cache.memo.misses, len(cache)) == (2, 5, 5)
    assert cache.memo.hit_rate == pytest.approx(2 / 7)

    encoder.batches.clear()
    assert torch.equal(cache.encode(mixed.flip(0), encoder), encoder(mixed.flip(0)))
    assert len(encoder.batches) == 1  # the assert's own call: everything came from the memo


def test_a_flipped_or_recast_image_is_another_key():
    image = _images(1, 2)[0]
    key = content_key(image)
    assert content_key(image.clone()) == key
    assert content_key(image.flip(-1)) != key
    assert content_key(image.to(torch.float64)) != key
    assert content_key(image.to(torch.bfloat16)) != content_key(image.to(torch.float16))
    assert content_key(image.reshape(3, 8, 32)) != key  # same bytes, another shape


def test_a_full_cache_still_encodes_right_but_keeps_no_more():
    encoder = CountingEncoder()
    latent_bytes = 4 * 2 * 2 * 4  # one (4, 2, 2) float32 latent
    cache = LatentCache(3 * latent_bytes)
    images = _images(5, 3)
    torch.testing.assert_close(cache.encode(images, encoder), encoder(images))
    assert len(cache) == 3 and cache.memo.bytes == 3 * latent_bytes
    encoder.batches.clear()
    torch.testing.assert_close(cache.encode(images, encoder), encoder(images))
    assert torch.equal(encoder.batches[0], images[3:])  # the two that did not fit are encoded again


def test_the_same_image_twice_in_one_call_is_kept_once():
    cache = LatentCache(2**20)
    image = _images(1, 4)
    out = cache.encode(torch.cat([image, image]), CountingEncoder())
    assert torch.equal(out[0], out[1]) and len(cache) == 1


def test_the_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        LatentCache(0)


def test_latent_step_with_a_cache_encodes_like_one_without_and_skips_the_vae_on_a_hit():
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config()).eval()
    calls = []
    vae.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    plain, cached = LatentStep(vae), LatentStep(vae, cache=LatentCache(2**20))
    images = _images(4, 5)
    expected = plain.encode(images)
    torch.testing.assert_close(cached.encode(images[:2]), expected[:2])
    calls.clear()
    # Two hits and two misses: the VAE sees the misses only; the hits are the earlier latents (the same up
    # to float rounding: a convolution's sums depend a little on the batch it ran in).
    torch.testing.assert_close(cached.encode(images), expected)
    assert calls == [2]
