"""Stage-2 inference schedule: the official call pattern against ours, same weights, tiny components.

    .venv/bin/python benchmarks/bench_multistream.py [--batch 1] [--resolution 64] [--rounds 3]

Official pattern (one pipeline call per main task, StableMTL code): re-encode the frame(s) for the main
stream, then for each of the T-1 other tasks re-encode the frame(s) again and run the auxiliary UNet once,
then run the main UNet once: T + T(T-1) UNet passes and a VAE encode per stream. Ours: one VAE encode per
frame, one batched auxiliary UNet call over the tasks, one batched main call (2T UNet evaluations in two
calls). Both produce the same latents (checked to 1e-5). Prints UNet passes, VAE encodes, median times,
``speed-up N.NNx`` for 7 tasks and the time versus N = 2..7 tasks (ours grows linearly, the official
pattern quadratically). Timings interleave the variants round by round (the CPU is shared).
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians

from stablemtl.models.conv_in import widen_conv_in
from stablemtl.models.multistream import MultiStreamUNet
from stablemtl.models.task_attention import TaskAttention
from stablemtl.models.task_tokens import TaskEmbeddings
from stablemtl.tasks import get_task
from stablemtl.testing import tiny_sd_components

SEVEN = ["normal", "depth", "semantic", "optical_flow", "scene_flow", "albedo", "shading"]


class Counter:
    """Counts a module's calls and the rows (per-image evaluations) they carry."""

    def __init__(self, *modules: torch.nn.Module):
        self.calls = self.rows = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, args):
        self.calls += 1
        self.rows += args[0].shape[0]

    def reset(self) -> None:
        self.calls = self.rows = 0


def build(seed: int = 0):
    parts = tiny_sd_components(seed)
    unet = widen_conv_in(parts["unet"], 12).eval()
    aux_unet = widen_conv_in(tiny_sd_components(seed)["unet"], 12).eval()
    tokens = TaskEmbeddings.compute(
        parts["text_encoder"], parts["tokenizer"], {t: get_task(t).prompt for t in SEVEN}
    )
    task_attention = TaskAttention.from_unet(unet, SEVEN, query_hidden_dim=64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking weights, so that the equality check means something
        for p in task_attention.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return parts["vae"], MultiStreamUNet(unet, aux_unet, task_attention), tokens


def encode(vae, images: torch.Tensor) -> torch.Tensor:
    return vae.encode(images * 2 - 1).latent_dist.mode() * vae.config.scaling_factor


def unet_input(z1: torch.Tensor, z2: torch.Tensor | None, task: str) -> torch.Tensor:
    second = z2 if (z2 is not None and get_task(task).needs_pair) else z1
    return torch.cat([z1, second, torch.zeros_like(z1)], dim=1)  # [B,12,h,w]


@torch.no_grad()
def official(vae, model: MultiStreamUNet, tokens, image, next_image, tasks) -> dict[str, torch.Tensor]:
    """Per main task: re-encode for every stream, T-1 auxiliary passes, one main pass."""
    out = {}
    for main in tasks:
        aux = [t for t in tasks if t != main]

        def stream_input(task: str) -> torch.Tensor:
            z1 = encode(vae, image)
            z2 = encode(vae, next_image) if get_task(task).needs_pair else None
            return unet_input(z1, z2, task)

        main_input = {main: stream_input(main)}
        per_layer: dict[int, list[torch.Tensor]] = {}
        for task in aux:
            model.capture.reset()
            MultiStreamUNet._unet_call(model.aux_unet, {task: stream_input(task)}, [task], tokens, 999)
            for layer, feature in model.capture.features().items():
                per_layer.setdefault(layer, []).append(feature)
        count = image.shape[0]
        features = {layer: torch.stack(v) for layer, v in per_layer.items()}  # [A,B,N,C]
        visible = torch.ones(count, len(aux), dtype=torch.bool)
        model.state.set(features, aux, [main] * count, torch.arange(count), visible)
        out[main] = MultiStreamUNet._unet_call(model.unet, main_input, [main], tokens, 999)
    return out


@torch.no_grad()
def ours(vae, model: MultiStreamUNet, tokens, image, next_image, tasks) -> dict[str, torch.Tensor]:
    """One encode per frame, one auxiliary call, one main call."""
    z1, z2 = encode(vae, torch.cat([image, next_image])).chunk(2)
    samples = {t: unet_input(z1, z2, t) for t in tasks}
    return model(samples, tasks, tokens).main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    vae, model, tokens = build()
    model.task_attention.requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(args.batch, 3, args.resolution, args.resolution, generator=generator)
    next_image = torch.rand(args.batch, 3, args.resolution, args.resolution, generator=generator)
    unet_counter = Counter(model.unet, model.aux_unet)
    vae_counter = Counter(vae.encoder)

    print(f"7 tasks, batch {args.batch}, {args.resolution}x{args.resolution}, tiny SD-layout components")
    results = {}
    for name, fn in (("official", official), ("ours", ours)):
        unet_counter.reset()
        vae_counter.reset()
        results[name] = fn(vae, model, tokens, image, next_image, SEVEN)
        print(
            f"  {name:<9} UNet passes {unet_counter.rows:3d} in {unet_counter.calls:2d} calls, "
            f"VAE encodes {vae_counter.rows:3d} in {vae_counter.calls:2d} calls"
        )
    worst = max((results["official"][t] - results["ours"][t]).abs().max().item() for t in SEVEN)
    print(f"  same latents: max |official - ours| = {worst:.2e}")
    if worst > 1e-5:
        raise SystemExit("the two schedules disagree")

    times = interleaved_medians(
        {
            "official": lambda: official(vae, model, tokens, image, next_image, SEVEN),
            "ours": lambda: ours(vae, model, tokens, image, next_image, SEVEN),
        },
        args.rounds,
    )
    for name, seconds in times.items():
        print(f"  {name:<9} {seconds * 1000:8.1f} ms")
    print(f"  speed-up {times['official'] / times['ours']:.2f}x")

    print("\ntime versus number of tasks N (median ms)")
    print("   N   official       ours   official/N^2   ours/N")
    for n in range(2, 8):
        tasks = SEVEN[:n]
        # A model of N tasks: the same weights, the auxiliary task set restricted to the first N tasks.
        sub = MultiStreamUNet(model.unet, model.aux_unet, model.task_attention, aux_tasks=tasks)
        t = interleaved_medians(
            {
                "official": lambda sub=sub, tasks=tasks: official(vae, sub, tokens, image, next_image, tasks),
                "ours": lambda sub=sub, tasks=tasks: ours(vae, sub, tokens, image, next_image, tasks),
            },
            args.rounds,
        )
        print(
            f"  {n:2d} {t['official'] * 1000:10.1f} {t['ours'] * 1000:10.1f} "
            f"{t['official'] * 1000 / n**2:14.2f} {t['ours'] * 1000 / n:8.2f}"
        )


if __name__ == "__main__":
    main()
