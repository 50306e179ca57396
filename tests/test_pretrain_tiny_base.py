"""The embedded base in assets/ loads offline, fits the size budget, and its recipe script runs end to end
(at toy scale: tests never retrain the shipped base)."""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "assets" / "stablemtl-tiny-base"


def test_shipped_base_loads_offline_with_sd_layout_and_fits_40_mb(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    size = sum(p.stat().st_size for p in BASE.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, size
    unet = UNet2DConditionModel.from_pretrained(BASE, subfolder="unet")
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert len(blocks) == 16 and unet.config.in_channels == 4
    vae = AutoencoderKL.from_pretrained(BASE, subfolder="vae")
    quality = json.loads((BASE / "quality.json").read_text())
    assert abs(vae.config.scaling_factor - quality["scaling_factor"]) < 1e-6
    card = (BASE / "README.md").read_text()
    assert "train_scripts/pretrain_tiny_base.py" in card and "psnr_depth" in card


def test_shipped_vae_reconstructs_task_images_better_than_a_fresh_one(pretrain_script):
    module = pretrain_script
    pool = module.render_pool(n_scenes=1, resolution=64, seed=123)
    trained = AutoencoderKL.from_pretrained(BASE, subfolder="vae")
    fresh = AutoencoderKL(**{**trained.config})
    torch.manual_seed(0)
    quality, baseline = (
        module.reconstruction_quality(trained, pool),
        module.reconstruction_quality(fresh, pool),
    )
    for kind in ("rgb", "depth", "normal", "albedo", "shading", "semantic"):
        assert quality[f"psnr_{kind}"] > baseline[f"psnr_{kind}"] + 5.0, kind
    assert quality["semantic_pixel_accuracy"] > 80.0


def test_recipe_script_runs_end_to_end_at_toy_scale(tmp_path, pretrain_script):
    module = pretrain_script
    out = module.main(
        [
            "--output_dir",
            str(tmp_path / "base"),
            "--n_scenes",
            "1",
            "--n_eval_scenes",
            "1",
            "--vae_steps",
            "2",
            "--unet_steps",
            "2",
            "--train_batch_size",
            "2",
            "--resolution",
            "32",
            "--measure_every",
            "1",
            "--label_share",
            "0.5",
        ]
    )
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    assert json.loads((out / "quality.json").read_text())["scaling_factor"] > 0
    assert not list(tmp_path.glob(".tmp-*"))
    curve = json.loads((out / "vae_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2] and all(c["psnr_depth"] > 0 for c in curve)
    card = (out / "README.md").read_text()
    assert "`pretrain` split" in card and "| VAE step |" in card and "| 2 |" in card
    for figure in ("vae_curve.png", "reconstructions.png"):
        assert Image.open(out / figure).size[0] > 100, figure
        assert f"]({figure})" in card
