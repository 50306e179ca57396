"""The tiny SD folder: complete, deterministic, offline-loadable, with the SD block layout."""

import json

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import CLIPTokenizer

from stablemtl.testing import make_tiny_sd_folder, tiny_sd_components


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_folder_layout_and_offline_load(tmp_path):
    folder = make_tiny_sd_folder(tmp_path / "sd")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    weights = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    assert weights == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert not list(folder.rglob("*.bin"))
    pipe = DiffusionPipeline.from_pretrained(folder)
    unet = pipe.unet
    # SD layout: 4 levels, 16 transformer blocks (6 down, 1 mid, 9 up), 8x VAE, 4 latent channels.
    assert len(unet.down_blocks) == len(unet.up_blocks) == 4
    self_attn = [m for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith("attn1")]
    assert len(self_attn) == 16
    assert pipe.vae.config.latent_channels == 4 and len(pipe.vae.config.block_out_channels) == 4
    assert pipe.vae.config.scaling_factor == 0.18215
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    assert len(tokenizer("scene flow").input_ids) == 4  # BOS, scene, flow, EOS
    assert unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_deterministic_and_seed_dependent(tmp_path):
    a = tiny_sd_components(seed=0)["unet"].state_dict()
    b = tiny_sd_components(seed=0)["unet"].state_dict()
    c = tiny_sd_components(seed=1)["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])
    folder = make_tiny_sd_folder(tmp_path / "sd", seed=0)
    loaded = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
    assert all(torch.equal(a[k], loaded[k]) for k in a)


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    folder = make_tiny_sd_folder(tmp_path / "sd", seed=0)
    stamp = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    make_tiny_sd_folder(folder, seed=1)
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    make_tiny_sd_folder(folder, seed=1, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["sd"]  # the temporary sibling is gone
    reloaded = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
    assert torch.equal(
        reloaded["conv_in.weight"], tiny_sd_components(seed=1)["unet"].state_dict()["conv_in.weight"]
    )


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE as the hub libraries see it (they read the variable at import) and no sockets."""
    import socket

    import diffusers.utils.hub_utils
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", True)


def test_from_pretrained_loads_the_folder_without_any_network(tmp_path, no_network):
    import socket

    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    with pytest.raises(OSError, match="offline test"):
        socket.create_connection(("huggingface.co", 443))
    folder = make_tiny_sd_folder(tmp_path / "sd", seed=3)
    reference = tiny_sd_components(seed=3)
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    for name in ("unet", "vae", "text_encoder"):
        expected = reference[name].state_dict()
        loaded = getattr(pipe, name).state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    assert torch.equal(vae.encoder.conv_in.weight, reference["vae"].encoder.conv_in.weight)
    ids = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")("depth", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
        expected = reference["text_encoder"](ids).last_hidden_state
    assert torch.equal(hidden, expected)
