"""Task-adaptive LoRA against full fine-tuning of the stage-1 UNet: what a training step costs.

    .venv/bin/python benchmarks/bench_lora.py [--pretrained_model_name_or_path DIR] [--resolution 64] \
        [--lora_rank 8] [--lora_task_rank 4] [--lora_task_layers dec] [--lora_targets ...]

For each variant, in its own fresh process (so that one variant's memory does not count for the other):
trainable parameters (and their share of the UNet, printed as ``trainable N.NN %``), the AdamW state after
one step, peak memory of a training step (CUDA: ``max_memory_allocated``; CPU: the rise of the process's
peak resident set during the step) and the median step time. Default base: the embedded tiny base.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch

from stablemtl.models.lora import DEFAULT_TARGETS

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["depth", "normal"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _group(batch: int, size: int, generator: torch.Generator) -> dict:
    return {
        "task": "depth",
        "image": torch.rand(batch, 3, size, size, generator=generator),
        "next_image": None,
        "label": 1 + 9 * torch.rand(batch, 1, size, size, generator=generator),
        "valid": torch.ones(batch, size, size, dtype=torch.bool),
        "source": "bench",
    }


def measure(args: argparse.Namespace, variant: str) -> dict[str, float]:
    """One variant's numbers (run in a fresh process)."""
    from stablemtl.models.lora import TaskLoRASettings
    from stablemtl.training.components import load_pipeline
    from stablemtl.training.objectives.lora import TaskLoRAObjective
    from stablemtl.training.objectives.single_stream import StableMTLObjective

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.pretrained_model_name_or_path, TASKS)
    if variant == "lora":
        settings = TaskLoRASettings(
            rank=args.lora_rank,
            task_rank=args.lora_task_rank,
            tasks=TASKS,
            task_layers=args.lora_task_layers,
            targets=list(args.lora_targets),
        )
        objective = TaskLoRAObjective(pipe, settings)
    else:
        objective = StableMTLObjective(pipe)
    modules = {name: m.to(device) for name, m in objective.trainable_modules().items()}
    objective.setup(device, torch.float32)
    unet = modules["unet"]
    base_parameters = sum(
        p.numel() for n, p in unet.named_parameters() if "lora_" not in n and "gates" not in n
    )
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    group = _group(args.batch_size, args.resolution, torch.Generator().manual_seed(0))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective.loss(modules, [group]).backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    step()  # the first step also allocates the optimizer state: it is the peak
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    return {
        "trainable": sum(p.numel() for p in trainable),
        "base": base_parameters,
        "optimizer_state_bytes": state_bytes,
        "peak_step_bytes": max(peak, 0),
        "step_seconds": statistics.median(times),
    }


# Stable Diffusion 2's UNet (widened to 12 input channels), built on the meta device: shapes, no weights.
SD2_UNET = {
    "sample_size": 96,
    "in_channels": 12,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}
ALL_TASKS = ["semantic", "depth", "normal", "optical_flow", "scene_flow", "albedo", "shading"]


def sd2_share(rank: int, task_rank: int, task_layers: str, targets: list[str]) -> tuple[int, int]:
    """(adapter parameters, UNet parameters) of TA-LoRA with the 7 built-in tasks on SD2's UNet."""
    from diffusers import UNet2DConditionModel

    from stablemtl.models.lora import TaskLoRA, TaskLoRASettings

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD2_UNET)
    total = sum(p.numel() for p in unet.parameters())
    settings = TaskLoRASettings(
        rank=rank, task_rank=task_rank, tasks=ALL_TASKS, task_layers=task_layers, targets=targets
    )
    return sum(p.numel() for p in TaskLoRA.install(unet, settings).adapter_parameters()), total


def _run(args: argparse.Namespace, variant: str, queue) -> None:
    queue.put(measure(args, variant))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pretrained_model_name_or_path", default=str(ROOT / "assets" / "stablemtl-tiny-base")
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_task_rank", type=int, default=4)
    parser.add_argument("--lora_task_layers", default="dec", choices=["dec", "all"])
    parser.add_argument("--lora_targets", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    results = {}
    for variant in ("full", "lora"):
        queue = context.Queue()
        process = context.Process(target=_run, args=(args, variant, queue))
        process.start()
        results[variant] = queue.get()
        process.join()
    print(f"{'':>6} {'trainable':>12} {'share':>16} {'AdamW state':>12} {'peak step':>11} {'step':>8}")
    for variant, r in results.items():
        share = 100 * r["trainable"] / r["base"]
        print(
            f"{variant:>6} {r['trainable']:>12,d} {f'trainable {share:.2f} %':>16} "
            f"{r['optimizer_state_bytes'] / 2**20:>9.2f} MB {r['peak_step_bytes'] / 2**20:>8.1f} MB "
            f"{r['step_seconds'] * 1000:>6.0f} ms"
        )
    adapters, total = sd2_share(args.lora_rank, args.lora_task_rank, args.lora_task_layers, args.lora_targets)
    print(
        f"SD2 UNet, 7 tasks: {adapters:,d} of {total:,d} parameters, trainable {100 * adapters / total:.2f} %"
    )
    return results


if __name__ == "__main__":
    main()
