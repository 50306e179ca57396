"""What ``pretrain_tiny_base.py`` reports about the base it made: label reconstruction of its VAE on held-out
renders, the held-out curve over VAE steps, a picture of round trips and the model card."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from stablemtl.models.latent_step import LatentStep
from stablemtl.tasks import get_task

# The tasks whose label images the card holds to the 30 dB aim (semantic: 99 % palette accuracy).
QUALITY_TASKS = ("depth", "normal", "albedo", "shading")


@torch.no_grad()
def reconstruction_quality(vae, pool: dict) -> dict[str, float]:
    """PSNR (dB, data range 2 of [-1, 1] images) per image kind and the semantic palette accuracy (%)."""
    report: dict[str, float] = {}
    for kind, images in pool.items():
        if kind == "captions":
            continue
        step = LatentStep(vae)
        recon = torch.cat([step.decode(step.encode(c)) for c in images.split(32)]).clamp(-1, 1)
        mse = F.mse_loss(recon, images).item()
        report[f"psnr_{kind}"] = 10 * math.log10(4.0 / max(mse, 1e-12))
        if kind == "semantic":
            task = get_task("semantic")
            target, predicted = task.decode(images), task.decode(recon)
            coloured = images.abs().sum(1, keepdim=True) < 2.999  # ignore pixels are pure black (-1,-1,-1)
            report["semantic_pixel_accuracy"] = 100 * (predicted == target)[coloured].float().mean().item()
    return report


def curve_table(curve: list[dict]) -> str:
    """The held-out curve as a markdown table: a row per measured VAE step."""
    kinds = [k for k in curve[0] if k != "step"]
    head = "| VAE step | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds)
    rows = [f"| {c['step']} | " + " | ".join(f"{c[k]:.2f}" for k in kinds) + " |" for c in curve]
    return "\n".join([head, *rows])


def plot_curve(curve: list[dict], path: Path) -> None:
    """PNG of the held-out label PSNR (left) and semantic palette accuracy (right) against VAE steps."""
    from matplotlib.figure import Figure

    steps = [c["step"] for c in curve]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    psnr, accuracy = fig.subplots(1, 2)
    for kind in (k for k in curve[0] if k.startswith("psnr_")):
        psnr.plot(steps, [c[kind] for c in curve], marker="o", label=kind.removeprefix("psnr_"))
    psnr.axhline(30.0, color="grey", linestyle="--", linewidth=1, label="aim (30 dB)")
    psnr.set(xlabel="VAE step", ylabel="PSNR on held-out renders (dB)")
    psnr.legend(fontsize=7, ncol=2)
    accuracy.plot(steps, [c["semantic_pixel_accuracy"] for c in curve], marker="o")
    accuracy.axhline(99.0, color="grey", linestyle="--", linewidth=1, label="aim (99 %)")
    accuracy.set(xlabel="VAE step", ylabel="semantic palette accuracy (%)")
    accuracy.legend(fontsize=7)
    fig.savefig(path, dpi=100)


@torch.no_grad()
def plot_reconstructions(vae, pool: dict, path: Path) -> None:
    """PNG of the first held-out image of each kind (top) and its VAE round trip (bottom)."""
    from matplotlib.figure import Figure

    kinds = [k for k in pool if k != "captions"]
    step = LatentStep(vae)
    fig = Figure(figsize=(1.6 * len(kinds), 3.4), layout="constrained")
    axes = fig.subplots(2, len(kinds), squeeze=False)
    for column, kind in enumerate(kinds):
        image = pool[kind][:1]
        recon = step.decode(step.encode(image)).clamp(-1, 1)
        for row, picture in enumerate((image, recon)):
            axes[row, column].imshow(((picture[0] + 1) / 2).permute(1, 2, 0).numpy())
            axes[row, column].set_axis_off()
        axes[0, column].set_title(kind, fontsize=8)
    for row, name in enumerate(("rendered", "VAE round trip")):
        axes[row, 0].text(
            -0.1, 0.5, name, rotation=90, va="center", ha="right", transform=axes[row, 0].transAxes
        )
    fig.savefig(path, dpi=100)


def write_model_card(
    out: Path,
    args: argparse.Namespace,
    quality: dict,
    timings: dict,
    n_params: dict,
    command: str,
    curve: list[dict],
    captions: Mapping[str, str],
) -> None:
    """``out/README.md``: how the base was made (``args``, ``command``, ``timings``, the ``captions`` of each
    render profile) and how well its VAE reconstructs held-out renders (``quality``, ``curve``)."""
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in sorted(quality.items()))
    missed = [f"psnr_{t}" for t in QUALITY_TASKS if quality[f"psnr_{t}"] < 30.0]
    missed += ["semantic_pixel_accuracy"] if quality["semantic_pixel_accuracy"] < 99.0 else []
    aims = (
        "All aims met."
        if not missed
        else f"Not met: {', '.join(missed)}; more VAE capacity and steps are "
        "the levers (`--vae_channels`, `--vae_layers_per_block`, `--vae_steps`)."
    )
    params = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in n_params.items())
    curve_section = (
        f"\n## Held-out curve (every {args.measure_every} VAE steps; `vae_curve.json`, `vae_curve.png`)\n"
        f"![held-out reconstruction against VAE steps](vae_curve.png)\n\n{curve_table(curve)}\n"
        if curve
        else ""
    )
    (out / "README.md").write_text(f"""---
license: apache-2.0
library_name: diffusers
tags: [stablemtl, stable-diffusion-layout, tiny, synthetic]
---
# stablemtl tiny base

A tiny Stable-Diffusion-layout model (diffusers folder, safetensors) made by the stablemtl project's
own script from its procedural renderer, so that the demo and the tests need no download. It is a
stand-in for `stabilityai/stable-diffusion-2` with the same component layout: `unet`
(`UNet2DConditionModel`, SD block layout, 16 transformer blocks), `vae` (`AutoencoderKL`, 8x down, 4
latent channels), `text_encoder` (`CLIPTextModel`), an offline-built `tokenizer` and a `scheduler`.
Parameters: {params}.

## How it was made
```bash
{command}
```
(on a machine without a GPU, set `OMP_NUM_THREADS` to its number of cores first: `accelerate launch`
otherwise gives the process one thread.)
- Data: {args.n_scenes} renders per profile ({", ".join(captions)}) at {args.resolution}x{args.resolution}
  px, the dedicated `pretrain` split (every label; a random stream no training or evaluation split
  reproduces), seed {args.seed}; both frames of each pair are RGB training images. Label images make
  {"their pool share" if args.label_share is None else f"{100 * args.label_share:.0f} %"} of each VAE batch.
  The VAE trains on random {args.vae_crop}x{args.vae_crop} crops (it is fully convolutional).
- VAE: `block_out_channels` {tuple(args.vae_channels)}, {args.vae_layers_per_block} layer(s) per block;
  {args.vae_steps} AdamW steps (lr {args.vae_lr}, cosine, batch {args.train_batch_size}), L1 + L2
  reconstruction (decoded from the posterior mean) of RGB images **and** of every task's label
  image (`Task.encode`), KL weight
  {args.vae_kl_weight}. `scaling_factor` = 1 / std of the posterior means = {quality["scaling_factor"]:.4f}.
- UNet: {args.unet_steps} AdamW steps (lr {args.unet_lr}, warm-up + cosine, batch
  {args.train_batch_size}), epsilon-prediction DDPM denoising of RGB latents conditioned on the captions
  {sorted(captions.values())}.
- Text encoder: seeded random initialisation, frozen (as SD's text encoder is frozen).
- Time on a 2-core CPU, no GPU: VAE {timings["vae"]:.0f} s (held-out measurements included), UNet
  {timings["unet"]:.0f} s.

## Reconstruction on held-out test renders ({args.n_eval_scenes} per profile, seed {args.eval_seed})
PSNR in dB over images in [-1, 1] (data range 2); semantic accuracy is the palette decoding of the
reconstructed label image against the true class ids, in %.

| measure | value |
|---|---|
{rows}

![held-out renders (top) and their VAE round trip (bottom)](reconstructions.png)

Aims: >= 30 dB on depth, normal, albedo and shading, >= 99 % semantic pixel accuracy. {aims}
{curve_section}
Licence: Apache-2.0 (code and weights).
""")
