"""Rendering speed: samples per second at 128x128 with every label (the ``test`` split of each profile).

Usage: ``python benchmarks/bench_render.py [--size 128] [--n 16] [--workers 2]``

Prints, per profile, the single-process rate (one torch thread: ``render_sample`` alone, and with the
row encoding that ``make_dataset`` adds), the rate per free core (from CPU time, so independent of other
load on the machine) and the wall-clock rate of ``--workers`` processes rendering in parallel.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from stablemtl.data.profiles import get_profile
from stablemtl.data.storage import sample_to_row
from stablemtl.data.synthetic import render_sample


def _render_range(profile: str, size: int, start: int, stop: int, encode: bool) -> int:
    torch.set_num_threads(1)
    tasks = get_profile(profile).tasks("test")
    for i in range(start, stop):
        sample = render_sample(profile, seed=0, size=size, split="test", index=i)
        if encode:
            sample_to_row(sample, i, tasks)
    return stop - start


def bench(profile: str, size: int, n: int, workers: int) -> dict[str, float]:
    _render_range(profile, size, 10_000, 10_001, False)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    _render_range(profile, size, 0, n, False)
    render = n / (time.perf_counter() - t0)
    # CPU seconds per sample do not depend on what else runs on the machine: n / cpu = rate per free core.
    per_core = n / (time.process_time() - c0)
    t0 = time.perf_counter()
    _render_range(profile, size, 0, n, True)
    encoded = n / (time.perf_counter() - t0)
    result = {"render": render, "per free core": per_core, "render+encode": encoded}
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            # Warm the workers up (imports) before timing.
            list(
                pool.map(
                    _render_range,
                    [profile] * workers,
                    [size] * workers,
                    [20_000] * workers,
                    [20_001] * workers,
                    [False] * workers,
                )
            )
            chunk = max(1, n // workers)
            starts = list(range(0, n * 2, chunk))
            t0 = time.perf_counter()
            done = sum(
                pool.map(
                    _render_range,
                    [profile] * len(starts),
                    [size] * len(starts),
                    starts,
                    [s + chunk for s in starts],
                    [True] * len(starts),
                )
            )
            result[f"{workers} workers"] = done / (time.perf_counter() - t0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profiles", nargs="+", default=["street", "indoor", "flying"])
    args = parser.parse_args()
    print(f"samples/s at {args.size}x{args.size}, all labels (test split), {args.n} samples per measurement")
    for profile in args.profiles:
        rates = bench(profile, args.size, args.n, args.workers)
        print(f"{profile:8s} " + "  ".join(f"{k}: {v:6.1f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
