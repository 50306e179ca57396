"""Rendering speed: samples per second at 128x128 with every label (the ``test`` split of each profile).

Usage: ``python benchmarks/bench_render.py [--size 128] [--n 16] [--repeats 3] [--workers 2] [--target 20]``

The machine may be shared, so every rate is measured two ways and each is the median of ``--repeats``:

- ``core``: samples per CPU-second of one process on one torch thread (``time.process_time``), i.e. the
  rate of one *free* core, whatever else runs; ``+enc`` adds the row encoding that ``make_dataset`` does.
- ``wall``: samples per wall-clock second of one process, and of ``--workers`` spawned processes
  rendering (and encoding) disjoint rows in parallel, as ``make_dataset(workers=...)`` does.
- ``est``: ``workers x core+enc``, what ``--workers`` free cores give (process-level parallelism scales
  linearly: workers share nothing).

The target (``--target``, samples/s on ``--workers`` cores) is checked against ``est`` and shown next to
the measured wall-clock rate, which is lower when other jobs compete for the cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from stablemtl.data.profiles import get_profile
from stablemtl.data.storage import sample_to_row
from stablemtl.data.synthetic import render_sample


def _render_range(profile: str, size: int, start: int, stop: int, encode: bool) -> tuple[int, float, float]:
    """Render rows ``start..stop-1``; returns (rows, wall seconds, CPU seconds of this process)."""
    torch.set_num_threads(1)
    tasks = get_profile(profile).tasks("test")
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(start, stop):
        sample = render_sample(profile, seed=0, size=size, split="test", index=i)
        if encode:
            sample_to_row(sample, i, tasks)
    return stop - start, time.perf_counter() - t0, time.process_time() - c0


def bench(profile: str, size: int, n: int, repeats: int, workers: int) -> dict[str, float]:
    """Median rates (samples/s) of ``repeats`` measurements of ``n`` samples each."""
    _render_range(profile, size, 10_000, 10_001, True)  # warm-up (imports, allocator)
    rates: dict[str, list[float]] = {"core": [], "core+enc": [], "wall": []}
    for r in range(repeats):
        rows, wall, cpu = _render_range(profile, size, r * n, (r + 1) * n, False)
        rates["core"].append(rows / cpu)
        rates["wall"].append(rows / wall)
        rows, _, cpu = _render_range(profile, size, r * n, (r + 1) * n, True)
        rates["core+enc"].append(rows / cpu)
    if workers > 1:
        rates[f"{workers}w wall"] = []
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            warm = [(profile, size, 20_000 + w, 20_001 + w, True) for w in range(workers)]
            list(pool.map(_render_range, *zip(*warm)))
            chunk = max(1, n // workers)
            for r in range(repeats):
                starts = range(r * n, r * n + chunk * workers, chunk)
                jobs = [(profile, size, s, s + chunk, True) for s in starts]
                t0 = time.perf_counter()
                done = sum(rows for rows, _, _ in pool.map(_render_range, *zip(*jobs)))
                rates[f"{workers}w wall"].append(done / (time.perf_counter() - t0))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out[f"{workers}w est"] = workers * out["core+enc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=16, help="samples per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per rate (median)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target", type=float, default=20.0, help="samples/s wanted on --workers cores")
    parser.add_argument("--profiles", nargs="+", default=["street", "indoor", "flying"])
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1 or args.workers < 1:
        raise ValueError("--n, --repeats and --workers must be >= 1")
    print(
        f"samples/s at {args.size}x{args.size}, all labels (test split); median of {args.repeats} x {args.n} "
        f"samples; target >= {args.target:g}/s on {args.workers} cores "
        f"(= {args.target / args.workers:g}/s per core)"
    )
    for profile in args.profiles:
        rates = bench(profile, args.size, args.n, args.repeats, args.workers)
        est = rates[f"{args.workers}w est"]
        verdict = "meets target" if est >= args.target else "BELOW target"
        print(
            f"{profile:8s} "
            + "  ".join(f"{k}: {v:5.1f}" for k, v in rates.items())
            + f"  | target {args.target:g}: {verdict}"
        )


if __name__ == "__main__":
    main()
