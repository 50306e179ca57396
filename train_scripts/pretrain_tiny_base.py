"""Pre-train the tiny Stable-Diffusion-layout base model that ships in ``assets/`` (no download needed).

Stable Diffusion brings three things StableMTL relies on: a VAE that reconstructs images, a UNet with a
generative prior, and a text encoder for the task prompts. This script makes a tiny version of each from
the project's own synthetic renderer:

1. the VAE (``AutoencoderKL``) learns to reconstruct the RGB images **and** every task's label drawn as a
   3-channel image (``Task.encode``), so that ``decode(encode(label))`` is faithful;
2. the UNet (SD block layout, 16 transformer blocks) learns text-conditioned denoising of RGB latents
   (epsilon prediction, DDPM noise), the same objective as Stable Diffusion, on captions that name the
   scene kind;
3. the CLIP text encoder stays at its seeded initialisation and frozen, as SD's text encoder is frozen;
   the tokenizer is built offline.

Run (through accelerate, as every training entry point of the toolkit)::

    accelerate launch train_scripts/pretrain_tiny_base.py --output_dir assets/stablemtl-tiny-base

On a machine without a GPU, ``accelerate launch`` runs one thread per process unless ``OMP_NUM_THREADS`` is
set (or ``--cpu`` is passed): set it to the number of cores, or training runs about 2x slower on 2 cores.

The model card written beside the weights records the command, the steps and the measured
reconstruction quality per task on held-out renders (``tiny_base_report.py``, beside this script).

Data hygiene: pre-training renders only the dedicated ``pretrain`` split, a random stream that no
training, validation or evaluation split can reproduce (``stablemtl.data.synthetic.sample.scene_rng``);
the reconstruction quality is measured on ``test``-split renders of ``--eval_seed``, which neither
pre-training nor the demo's test rows use. Measure an existing base without training it::

    python train_scripts/pretrain_tiny_base.py --measure_only assets/stablemtl-tiny-base
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
from tiny_base_report import plot_curve, plot_reconstructions, reconstruction_quality, write_model_card
from tqdm.auto import tqdm

from stablemtl.data.synthetic import render_sample
from stablemtl.models.latent_step import LatentStep
from stablemtl.tasks import get_task
from stablemtl.testing import tiny_sd_components, tiny_vae_config
from stablemtl.utils.atomic import atomic_folder

logger = logging.getLogger("pretrain_tiny_base")

PROFILES = ("indoor", "street", "flying")
CAPTIONS = {
    "indoor": "a photo of an indoor scene",
    "street": "a photo of a street scene",
    "flying": "a photo of objects flying",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="assets/stablemtl-tiny-base")
    parser.add_argument("--resolution", type=int, default=64, help="render size of the training images")
    parser.add_argument("--n_scenes", type=int, default=240, help="rendered scenes per profile for training")
    parser.add_argument("--n_eval_scenes", type=int, default=8, help="held-out scenes per profile")
    parser.add_argument(
        "--vae_crop", type=int, default=32, help="VAE trains on random square crops (fully convolutional)"
    )
    parser.add_argument(
        "--vae_channels", type=int, nargs=4, default=(32, 64, 128, 128), help="VAE block_out_channels"
    )
    parser.add_argument("--vae_layers_per_block", type=int, default=1)
    parser.add_argument("--vae_steps", type=int, default=12000)
    parser.add_argument("--vae_lr", type=float, default=1e-3)
    parser.add_argument("--vae_kl_weight", type=float, default=1e-6)
    parser.add_argument(
        "--label_share", type=float, default=None,
        help="fraction in [0, 1] of each VAE batch drawn from label images (default: pool share)",
    )  # fmt: skip
    parser.add_argument(
        "--eval_seed", type=int, default=7919, help="seed of the measured held-out test renders"
    )
    parser.add_argument(
        "--measure_every", type=int, default=0,
        help="measure the held-out reconstruction every N VAE steps: the curve goes into the model card",
    )  # fmt: skip
    parser.add_argument(
        "--measure_only", default=None,
        help="measure the VAE of this base folder on the held-out renders and exit (no training)",
    )  # fmt: skip
    parser.add_argument("--unet_steps", type=int, default=800)
    parser.add_argument("--unet_lr", type=float, default=5e-4)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    args = parser.parse_args(argv)
    if args.label_share is not None and not 0.0 <= args.label_share <= 1.0:
        raise ValueError(f"label_share must be in [0, 1], got {args.label_share}")
    return args


def render_pool(
    n_scenes: int, resolution: int, seed: int, split: str = "pretrain"
) -> dict[str, torch.Tensor]:
    """Render rows ``0..n_scenes-1`` of ``split`` per profile, every label; stacked VAE targets in [-1, 1].

    Returns ``{"rgb": (N,3,H,W), "captions": list, <task>: (M,3,H,W) encoded label images}``.
    """
    pool: dict[str, list] = {"rgb": [], "captions": []}
    total = n_scenes * len(PROFILES)
    with tqdm(total=total, desc=f"render {split} (seed {seed})") as bar:
        for profile in PROFILES:
            for index in range(n_scenes):
                sample = render_sample(profile, seed=seed, size=resolution, split=split, index=index)
                for frame in ("image", "next_image"):
                    if frame in sample:
                        pool["rgb"].append(sample[frame] * 2 - 1)
                        pool["captions"].append(CAPTIONS[profile])
                for task_name, label in sample["labels"].items():
                    image3, _ = get_task(task_name).encode(label, sample["valid"][task_name])
                    pool.setdefault(task_name, []).append(image3)
                bar.update()
    return {k: (torch.stack(v) if k != "captions" else v) for k, v in pool.items()}


def vae_targets(pool: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """What the VAE must reconstruct: ``(rgb (N,3,H,W), every encoded label image (M,3,H,W))`` in [-1, 1]."""
    labels = [v for k, v in pool.items() if k not in ("captions", "rgb")]
    return pool["rgb"], torch.cat(labels)


def vae_batch(rgb: torch.Tensor, labels: torch.Tensor, args, generator: torch.Generator) -> torch.Tensor:
    """One VAE batch of random crops; ``args.label_share`` of it from label images (None: pool share)."""
    n = args.train_batch_size
    share = len(labels) / (len(labels) + len(rgb)) if args.label_share is None else args.label_share
    n_labels = round(share * n)
    parts = [
        random_crops(pool, k, args.vae_crop, generator)
        for pool, k in ((rgb, n - n_labels), (labels, n_labels))
        if k
    ]
    return torch.cat(parts)


def random_crops(images: torch.Tensor, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops of random images of ``images`` (N,3,H,W), aligned to 8 px."""
    height, width = images.shape[-2:]
    picks = torch.randint(len(images), (n,), generator=generator).tolist()
    tops = (torch.randint((height - size) // 8 + 1, (n,), generator=generator) * 8).tolist()
    lefts = (torch.randint((width - size) // 8 + 1, (n,), generator=generator) * 8).tolist()
    return torch.stack([images[i, :, t : t + size, s : s + size] for i, t, s in zip(picks, tops, lefts)])


def optimizer_step(accelerator: Accelerator, model, loss: torch.Tensor, optimizer, scheduler) -> None:
    """Backward, clip the gradient norm to 1, step the optimizer and the LR schedule."""
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_vae(
    accelerator: Accelerator, vae, targets: tuple, args, generator: torch.Generator, on_measure=None
) -> None:
    """Train the VAE; every ``args.measure_every`` steps (and at the end) call ``on_measure(step)``."""
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.vae_steps, eta_min=args.vae_lr * 0.02
    )
    vae_model, optimizer = accelerator.prepare(vae, optimizer)
    bar = tqdm(range(args.vae_steps), desc="VAE", disable=not accelerator.is_local_main_process)
    for step in bar:
        if on_measure is not None and args.measure_every and step and step % args.measure_every == 0:
            vae.eval()
            on_measure(step)
            vae.train()
        batch = vae_batch(*targets, args, generator).to(accelerator.device)
        with accelerator.autocast():
            posterior = vae_model.encode(batch).latent_dist
            # Decode the posterior mean: StableMTL only ever encodes with the mean (docs/encodings.md), and
            # sampling noise at a near-zero KL weight only slows the tiny VAE down.
            reconstruction = vae_model.decode(posterior.mode()).sample
        # L1 keeps edges (palette colours, normals) sharp; the tiny KL keeps the latent well scaled.
        loss = F.l1_loss(reconstruction.float(), batch) + F.mse_loss(reconstruction.float(), batch)
        loss = loss + args.vae_kl_weight * posterior.kl().mean()
        optimizer_step(accelerator, vae_model, loss, optimizer, scheduler)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def measure_scaling_factor(vae, images: torch.Tensor) -> float:
    """1 / std of the posterior means, so that scaled latents have unit variance (how SD picked 0.18215)."""
    step = LatentStep(vae)
    latents = torch.cat([step.encode(chunk) for chunk in images.split(64)]) / step.scaling_factor
    return float(1.0 / latents.std())


def train_unet(accelerator, unet, vae, text_encoder, tokenizer, pool, args, generator) -> None:
    noise_scheduler = DDPMScheduler.from_config(
        {**dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")}
    )
    with torch.no_grad():
        latents = torch.cat([LatentStep(vae).encode(c) for c in pool["rgb"].split(64)])
        prompts = sorted(set(pool["captions"]))
        ids = tokenizer(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        embeddings = text_encoder(ids.input_ids)[0]
    caption_index = torch.tensor([prompts.index(c) for c in pool["captions"]])
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=1e-2)
    warmup = max(1, args.unet_steps // 20)
    lr_lambda = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.unet_steps))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    unet_model, optimizer = accelerator.prepare(unet, optimizer)
    bar = tqdm(range(args.unet_steps), desc="UNet", disable=not accelerator.is_local_main_process)
    for _ in bar:
        pick = torch.randint(len(latents), (args.train_batch_size,), generator=generator)
        x0 = latents[pick].to(accelerator.device)
        noise = torch.randn(x0.shape, generator=generator).to(accelerator.device)
        timesteps = torch.randint(0, 1000, (len(x0),), generator=generator).to(accelerator.device)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        with accelerator.autocast():
            prediction = unet_model(
                noisy, timesteps, embeddings[caption_index[pick]].to(accelerator.device)
            ).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer_step(accelerator, unet_model, loss, optimizer, scheduler)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    unet.eval().requires_grad_(False)


def measure_base(folder: str | Path, args) -> dict[str, float]:
    """Label reconstruction of ``folder``'s VAE on the held-out test renders (``--eval_seed``)."""
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    quality = reconstruction_quality(
        vae, render_pool(args.n_eval_scenes, args.resolution, args.eval_seed, "test")
    )
    quality["scaling_factor"] = vae.config.scaling_factor
    return quality


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.measure_only:
        print(json.dumps(measure_base(args.measure_only, args), indent=1))
        return Path(args.measure_only)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    components = tiny_sd_components(seed=args.seed)
    # The VAE is wider than the test components' one: it must reconstruct label images faithfully.
    vae_config = {**tiny_vae_config(tuple(args.vae_channels)), "layers_per_block": args.vae_layers_per_block}
    torch.manual_seed(args.seed + 1)
    components["vae"] = AutoencoderKL(**vae_config)
    vae, unet = components["vae"], components["unet"]
    text_encoder, tokenizer = components["text_encoder"], components["tokenizer"]

    train_pool = render_pool(args.n_scenes, args.resolution, args.seed)
    eval_pool = render_pool(args.n_eval_scenes, args.resolution, args.eval_seed, split="test")
    timings = {}
    start = time.perf_counter()
    curve: list[dict] = []

    def measure(step: int) -> None:  # the held-out curve shows whether more steps would still help
        curve.append({"step": step, **reconstruction_quality(vae, eval_pool)})
        logger.info("VAE step %d: %s", step, json.dumps({k: round(v, 2) for k, v in curve[-1].items()}))

    train_vae(accelerator, vae, vae_targets(train_pool), args, generator, measure)
    timings["vae"] = time.perf_counter() - start
    vae.register_to_config(scaling_factor=measure_scaling_factor(vae, train_pool["rgb"]))
    start = time.perf_counter()
    train_unet(accelerator, unet, vae, text_encoder, tokenizer, train_pool, args, generator)
    timings["unet"] = time.perf_counter() - start

    quality = reconstruction_quality(vae, eval_pool)
    quality["scaling_factor"] = vae.config.scaling_factor
    if curve:
        curve.append({"step": args.vae_steps, **{k: v for k, v in quality.items() if k != "scaling_factor"}})
    logger.info("reconstruction quality: %s", json.dumps(quality, indent=1))
    out = Path(args.output_dir)
    if accelerator.is_main_process:
        pipe = StableDiffusionPipeline(
            **{**components, "unet": accelerator.unwrap_model(unet), "vae": accelerator.unwrap_model(vae)}
        )
        with atomic_folder(out) as tmp:  # a reader sees the old base or the new one, never half of it
            pipe.save_pretrained(tmp, safe_serialization=True)
            size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
            quality["size_mb"] = size / 2**20
            if size > 40 * 2**20:  # the asset budget of the embedded base (tests/test_pretrain_tiny_base.py)
                logger.warning("the base is %.1f MB, over the 40 MB budget of assets/", size / 2**20)
            n_params = {
                name: sum(p.numel() for p in m.parameters())
                for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
            }
            command = " ".join(
                ["accelerate launch train_scripts/pretrain_tiny_base.py", *(argv or sys.argv[1:])]
            )
            write_model_card(tmp, args, quality, timings, n_params, command, curve, CAPTIONS)
            (tmp / "quality.json").write_text(json.dumps(quality, indent=1))
            plot_reconstructions(vae, eval_pool, tmp / "reconstructions.png")
            if curve:
                (tmp / "vae_curve.json").write_text(json.dumps(curve, indent=1))
                plot_curve(curve, tmp / "vae_curve.png")
    accelerator.wait_for_everyone()
    return out


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
