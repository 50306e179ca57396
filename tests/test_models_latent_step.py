"""The one latent step: encode/decode, the 12-channel UNet input, the timestep, shared settings."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from stablemtl.models.latent_step import LatentStep, LatentStepSettings
from stablemtl.testing import tiny_vae_config


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**tiny_vae_config()).eval()


def _latents(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_encode_is_the_scaled_posterior_mode(vae):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    step = LatentStep(vae)
    expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(step.encode(images), expected)
    decoded = step.decode(step.encode(images))
    torch.testing.assert_close(decoded, vae.decode(expected / vae.config.scaling_factor).sample)


def test_unet_input_stacks_frame_second_frame_and_target(vae):
    first, second = _latents(3, 0), _latents(3, 1)
    has_pair = torch.tensor([True, False, True])
    sample = LatentStep(vae).unet_input(first, second, has_pair)
    assert sample.shape == (3, 12, 2, 2)
    torch.testing.assert_close(sample[:, :4], first)
    torch.testing.assert_close(sample[[0, 2], 4:8], second[[0, 2]])
    torch.testing.assert_close(sample[1, 4:8], first[1])  # duplicate fallback
    assert not sample[:, 8:].any()  # deterministic: zero target slot
    zero = LatentStep(vae, LatentStepSettings(second_frame="zero")).unet_input(first, second, has_pair)
    assert not zero[1, 4:8].any() and torch.equal(zero[0, 4:8], second[0])
    no_pair = LatentStep(vae).unet_input(first)
    torch.testing.assert_close(no_pair[:, 4:8], first)


def test_random_input_noise_draws_from_the_generator(vae):
    step = LatentStep(vae, LatentStepSettings(input_noise="random"))
    a = step.unet_input(_latents(2, 0), generator=torch.Generator().manual_seed(5))
    b = step.unet_input(_latents(2, 0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a[:, 8:].std() > 0.5


def test_timesteps_are_the_fixed_one(vae):
    steps = LatentStep(vae, LatentStepSettings(timestep=500)).timesteps(3, "cpu")
    assert steps.dtype == torch.long and steps.tolist() == [500, 500, 500]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timestep": 1000}, "timestep"),
        ({"timestep": 2.5}, "timestep"),
        ({"second_frame": "copy"}, "second_frame"),
        ({"input_noise": "gaussian"}, "input_noise"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatentStepSettings(**kwargs)


def test_a_force_upcast_half_vae_decodes_in_float32_without_casting_back(vae):
    half = AutoencoderKL(**tiny_vae_config())
    half.load_state_dict(vae.state_dict())
    half.to(torch.float16)
    assert half.config.force_upcast
    step = LatentStep(half)
    out = step.decode(_latents(1, 2).half())
    reference = LatentStep(vae).decode(_latents(1, 2).half().float())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, atol=2e-2, rtol=0)
    assert half.decoder.conv_in.weight.dtype == torch.float32  # upcast once, kept
    assert half.encoder.conv_in.weight.dtype == torch.float16
