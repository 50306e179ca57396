"""Two demo training runs one by one on all threads against side by side in two one-thread workers.

    .venv/bin/python benchmarks/bench_parallel_runs.py [--steps 60] [--rounds 2]

Each run is a real stage-1 run of ``make demo`` (``configs/demo.yaml``: the embedded base, batch 8 at 64 px,
both caches) on freshly rendered sources, through ``stablemtl.cli.parallel_runs.run_all``: ``workers=1``
trains both in this process on every thread, ``workers=2`` in two spawned worker processes of one thread
each (their start-up included, as the demo pays it). Rounds alternate the two variants (the CPU is
shared); the wall-clock ratio says what ``make demo --jobs 2`` saves over ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stablemtl.cli.demo_training import train_stage1
from stablemtl.cli.parallel_runs import TrainingRun, run_all
from stablemtl.data import make_dataset


def _runs(data: list[Path], out: Path, steps: int) -> list[TrainingRun]:
    args = argparse.Namespace(config=None, base=None, seed=0, validation_data=None)
    return [
        TrainingRun(f"run {i}", f"run_{i}", train_stage1, (args, out, f"run_{i}", data, None, steps), steps)
        for i in range(2)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=24, help="rows rendered per source")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_parallel_runs_"))
    try:
        data = [
            make_dataset(p, args.rows, root / "data" / p, size=64, split="train", seed=0)
            for p in ("indoor", "street", "flying")
        ]
        times: dict[str, list[float]] = {"one by one (workers=1)": [], "side by side (workers=2)": []}
        for round_index in range(args.rounds):
            for seconds, workers in zip(times.values(), (1, 2)):
                out = root / f"round{round_index}_workers{workers}"
                start = time.perf_counter()
                run_all(_runs(data, out, args.steps), workers, out / "logs")
                seconds.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntwo stage-1 runs of {args.steps} steps, {torch.get_num_threads()} threads in this process")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"  {name:<26} {median:7.1f} s  (rounds: {', '.join(f'{s:.1f}' for s in times[name])})")
    one_by_one, side_by_side = medians.values()
    print(f"  ratio side by side / one by one: {side_by_side / one_by_one:.2f}")


if __name__ == "__main__":
    main()
