"""Stage-1 overhead: our training step and pipeline call against bare diffusers/PyTorch calls.

    .venv/bin/python benchmarks/bench_stage1.py [--pretrained_model_name_or_path DIR] [--resolution 64]

Training: ``micro_step`` (label encoding by the task, one VAE call for frames and labels, masked loss,
accelerate's accumulate/backward/clip/step) against the same work written bare (VAE encode, UNet
forward, MSE, backward, clip, Adam step), against a bare UNet forward/backward on precomputed latents,
and with a warm latent cache (``--latent_cache_mb``: every frame and label met before, no VAE call).
Inference: ``StableMTLPipeline.__call__`` against bare VAE encode + one batched UNet call + VAE decode.
Timings interleave the variants round by round (the CPU is shared) and report medians. Target: our
overhead over the bare equivalent <= 5 %.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from timing import interleaved_medians

from stablemtl.resources import embedded_base
from stablemtl.training.components import load_pipeline
from stablemtl.training.objectives.single_stream import StableMTLObjective
from stablemtl.training.step import micro_step


def _depth_group(batch: int, size: int, generator: torch.Generator) -> dict:
    image = torch.rand(batch, 3, size, size, generator=generator)
    depth = 1 + 9 * torch.rand(batch, 1, size, size, generator=generator)
    valid = torch.ones(batch, size, size, dtype=torch.bool)
    return {
        "image": image,
        "next_image": None,
        "label": depth,
        "valid": valid,
        "source": "bench",
        "task": "depth",
    }


def bench_training(pipe, batch: int, size: int, rounds: int, warmup: int) -> dict[str, float]:
    accelerator = Accelerator(step_scheduler_with_optimizer=False)
    objective = StableMTLObjective(pipe)
    objective.setup(accelerator.device, torch.float32)
    cached = StableMTLObjective(pipe, latent_cache_mb=64)  # --latent_cache_mb, warm after the first call
    cached.setup(accelerator.device, torch.float32)
    optimizer = torch.optim.Adam(pipe.unet.parameters(), lr=1e-6)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    group = _depth_group(batch, size, torch.Generator().manual_seed(0))
    prepared = objective.prepare([group])
    hidden = pipe.task_embeddings.batch(["depth"] * batch, device=accelerator.device)[0]
    timesteps = torch.full((batch,), 999, device=accelerator.device)
    scale = pipe.vae.config.scaling_factor

    def ours() -> None:
        micro_step(accelerator, {"unet": unet}, objective, optimizer, [group], max_grad_norm=5.0)

    def ours_cached() -> None:
        micro_step(accelerator, {"unet": unet}, cached, optimizer, [group], max_grad_norm=5.0)

    def bare_vae_unet() -> None:
        with torch.no_grad():
            label3 = (group["label"] / 10 * 2 - 1).repeat(1, 3, 1, 1)  # a stand-in label image, same size
            images = torch.cat([group["image"] * 2 - 1, label3]).to(accelerator.device)
            latents = pipe.vae.encode(images).latent_dist.mean * scale
        z1, target = latents.chunk(2)
        sample = torch.cat([z1, z1, torch.zeros_like(z1)], dim=1)
        loss = F.mse_loss(unet(sample, timesteps, encoder_hidden_states=hidden).sample, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 5.0)
        optimizer.optimizer.step()
        optimizer.optimizer.zero_grad(set_to_none=True)

    def bare_unet() -> None:
        loss = F.mse_loss(
            unet(prepared.sample, timesteps, encoder_hidden_states=hidden).sample, prepared.target
        )
        loss.backward()
        optimizer.optimizer.step()
        optimizer.optimizer.zero_grad(set_to_none=True)

    variants = {
        "training step (ours)": ours,
        "ours, warm latent cache": ours_cached,
        "bare VAE+UNet step": bare_vae_unet,
        "bare UNet fwd/bwd": bare_unet,
    }
    return interleaved_medians(variants, rounds, warmup)


@torch.no_grad()
def bench_pipeline(
    pipe, batch: int, size: int, rounds: int, warmup: int, tasks: list[str]
) -> dict[str, float]:
    pipe.unet.eval()
    device = pipe.unet.device
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    hidden, mask = pipe.task_embeddings.batch(tasks, device=device)
    scale = pipe.vae.config.scaling_factor

    def ours() -> None:
        pipe(images, tasks=tasks, batch_size=batch, output_type="pt")

    def bare() -> None:
        z1 = pipe.vae.encode(images * 2 - 1).latent_dist.mean * scale
        z = z1.repeat_interleave(len(tasks), dim=0)
        sample = torch.cat([z, z, torch.zeros_like(z)], dim=1)
        t = torch.full((sample.shape[0],), 999, device=device)
        out = pipe.unet(
            sample,
            t,
            encoder_hidden_states=hidden.repeat(batch, 1, 1),
            encoder_attention_mask=None if mask is None else mask.repeat(batch, 1),
        ).sample
        pipe.vae.decode(out / scale).sample.clamp(-1, 1)

    pipe.set_progress_bar_config(disable=True)
    return interleaved_medians({"pipeline call (ours)": ours, "bare VAE+UNet+VAE": bare}, rounds, warmup)


def _report(title: str, times: dict[str, float], ours: str, bare: str) -> None:
    print(f"\n{title}")
    for name, seconds in times.items():
        print(f"  {name:<24} {seconds * 1000:8.1f} ms")
    ratio = times[ours] / times[bare]
    print(f"  ratio ours / {bare!r}: {ratio:.3f}, overhead {100 * (ratio - 1):+.1f} % (target <= +5 %)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="SD folder or Hub id (default: the embedded tiny base)",
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = args.pretrained_model_name_or_path or str(embedded_base())
    tasks = ["depth", "normal", "semantic"]
    pipe = load_pipeline(base, tasks)
    print(f"base {base}, batch {args.batch_size} at {args.resolution} px, {torch.get_num_threads()} threads")
    train = bench_training(pipe, args.batch_size, args.resolution, args.rounds, args.warmup)
    _report("training (one micro-batch of depth)", train, "training step (ours)", "bare VAE+UNet step")
    unet_only = train["training step (ours)"] / train["bare UNet fwd/bwd"]
    print(f"  ours vs bare UNet fwd/bwd only (no VAE, no clipping): x{unet_only:.2f}")
    warm = train["ours, warm latent cache"] / train["training step (ours)"]
    print(f"  ours with every image in the latent cache / ours: {warm:.3f} (what is left without the VAE)")
    infer = bench_pipeline(pipe, args.batch_size, args.resolution, args.rounds, args.warmup, tasks)
    _report(f"inference ({len(tasks)} tasks per image)", infer, "pipeline call (ours)", "bare VAE+UNet+VAE")


if __name__ == "__main__":
    main()
