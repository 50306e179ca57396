"""The two cheap parts of a training step that used to cost a third of it: reading a sample, and Adam.

    .venv/bin/python benchmarks/bench_training_io.py [--rows 32] [--size 64] [--rounds 30]

Reading: a training item of one task (``item(index, task)``, which reads and decodes only the image, the
next frame and that task's columns) against the whole row (``dataset[index]``, every label) and against a
copy from the row cache (``--row_cache_mb``), on a rendered ``street`` source (five labels per row).
Adam: PyTorch's fused kernel against its per-parameter loop (the CPU default) on the embedded base's UNet
parameters. Variants are interleaved round by round (the CPU is shared) and medians reported.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from timing import interleaved_medians

from stablemtl.data import load_source, make_dataset
from stablemtl.resources import embedded_base
from stablemtl.utils.memo import ByteBudgetMemo


def bench_reading(rows: int, size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_dataset("street", rows, Path(tmp) / "street", size=size, seed=0)
        source, memoised = load_source(folder), load_source(folder)
        memoised.row_memo = ByteBudgetMemo(2**30, "row cache")  # --row_cache_mb; warm after round one
        indices = range(rows)
        times = interleaved_medians(
            {
                "whole row (every label)": lambda: [source[i] for i in indices],
                "one task's item (depth)": lambda: [source.item(i, "depth") for i in indices],
                "item from the row cache": lambda: [memoised.item(i, "depth") for i in indices],
            },
            rounds,
        )
    print(f"reading {rows} street rows at {size} px ({len(source.tasks)} labels per row)")
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds / rows * 1e3:7.2f} ms per sample")
    ratio = times["whole row (every label)"] / times["one task's item (depth)"]
    print(f"  one task's item / whole row: speed-up {ratio:.2f}x")
    ratio = times["one task's item (depth)"] / times["item from the row cache"]
    print(f"  row cache (a decoded copy) / decoding the item: speed-up {ratio:.2f}x")


def bench_adam(rounds: int) -> None:
    unet = UNet2DConditionModel.from_pretrained(embedded_base(), subfolder="unet")
    parameters = list(unet.parameters())
    for p in parameters:
        p.grad = torch.randn_like(p)
    optimizers = {
        "per-parameter loop": torch.optim.AdamW(parameters, lr=1e-4, foreach=False),
        "fused": torch.optim.AdamW(parameters, lr=1e-4, fused=True),
    }
    times = interleaved_medians({name: opt.step for name, opt in optimizers.items()}, rounds)
    count = sum(p.numel() for p in parameters)
    print(f"AdamW step over {count:,} parameters ({len(parameters)} tensors)")
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds * 1e3:7.2f} ms")
    print(f"  speed-up {times['per-parameter loop'] / times['fused']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_reading(args.rows, args.size, max(3, args.rounds // 5))
    bench_adam(args.rounds)


if __name__ == "__main__":
    main()
