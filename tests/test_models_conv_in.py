"""widen_conv_in: the widened layer reproduces the pretrained one on tiled inputs and round-trips on disk."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from stablemtl.models.conv_in import widen_conv_in
from stablemtl.testing import tiny_unet_config


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def test_widened_conv_on_tiled_input_equals_original_conv():
    unet = _unet()
    original = torch.nn.Conv2d(4, unet.conv_in.out_channels, 3, padding=1)
    original.load_state_dict(unet.conv_in.state_dict())
    widen_conv_in(unet, 12)
    assert unet.conv_in.weight.shape == (original.out_channels, 12, 3, 3)
    assert unet.config.in_channels == 12
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(unet.conv_in(torch.cat([z, z, z], 1)), original(z), atol=1e-6, rtol=1e-5)
    # Weight is exactly one third of the pretrained weight in each group; the bias is untouched.
    torch.testing.assert_close(unet.conv_in.weight[:, 8:], original.weight / 3)
    torch.testing.assert_close(unet.conv_in.bias, original.bias)


def test_widened_unet_on_tiled_input_equals_original_unet():
    unet, reference = _unet(), _unet()
    widen_conv_in(unet, 8)
    z = torch.randn(1, 4, 8, 8)
    cond = torch.randn(1, 3, unet.config.cross_attention_dim)
    with torch.no_grad():
        wide = unet(torch.cat([z, z], 1), 999, cond).sample
        ref = reference(z, 999, cond).sample
    torch.testing.assert_close(wide, ref, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    unet = widen_conv_in(_unet(), 12)
    unet.save_pretrained(tmp_path / "unet")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    assert loaded.config.in_channels == 12
    x = torch.randn(1, 12, 8, 8)
    cond = torch.randn(1, 3, unet.config.cross_attention_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 999, cond).sample, unet(x, 999, cond).sample)


def test_same_width_is_a_no_op_and_bad_widths_raise():
    unet = _unet()
    conv = unet.conv_in
    assert widen_conv_in(unet, 4).conv_in is conv
    with pytest.raises(ValueError, match="in_channels=10"):
        widen_conv_in(unet, 10)
    with pytest.raises(ValueError, match="multiple"):
        widen_conv_in(widen_conv_in(_unet(), 12), 8)
