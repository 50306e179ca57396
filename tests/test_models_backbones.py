"""The shared ResNet encoder of the CNN baselines: multi-scale shapes, stacked frames, pretrained loading."""

import pytest
import torch

from stablemtl.models.baselines.backbones import ResNetEncoder, resnet18_config


def test_resnet18_features_at_four_strides():
    encoder = ResNetEncoder(resnet18_config())
    feats = encoder(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 16, 24),
        (2, 128, 8, 12),
        (2, 256, 4, 6),
        (2, 512, 2, 3),
    ]
    assert encoder.channels == (64, 128, 256, 512)
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(11.18e6, rel=0.01)


def test_seeded_construction_is_reproducible_and_config_round_trips():
    a, b, c = (ResNetEncoder(seed=s).eval() for s in (3, 3, 4))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(a(x)[-1], b(x)[-1])
    assert not torch.equal(a(x)[-1], c(x)[-1])
    rebuilt = ResNetEncoder(a.config_dict()).eval()
    rebuilt.load_state_dict(a.state_dict())
    assert torch.equal(rebuilt(x)[0], a(x)[0])


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="in_channels"):
        resnet18_config(4)
    with pytest.raises(ValueError, match="images"):
        ResNetEncoder()(torch.rand(1, 6, 32, 32))


def test_pretrained_folder_loads_and_stem_inflation_keeps_identical_pairs(tmp_path):
    source = ResNetEncoder(seed=7).eval()
    source.backbone.save_pretrained(tmp_path)  # stands in for a downloaded ImageNet ResNet
    rgb = ResNetEncoder.from_pretrained(str(tmp_path), local_files_only=True).eval()
    pair = ResNetEncoder.from_pretrained(str(tmp_path), in_channels=6, local_files_only=True).eval()
    frame = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        expected = source(frame)
        torch.testing.assert_close(rgb(frame)[2], expected[2])
        stacked = pair(torch.cat([frame, frame], dim=1))
    assert pair.in_channels == 6
    torch.testing.assert_close(stacked[3], expected[3], rtol=1e-4, atol=1e-5)
