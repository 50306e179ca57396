"""Training runs side by side: independent runs in worker processes, each on its share of the CPU threads.

The demo's models are so small that a training step is bound by the overhead of each operator, not by
arithmetic: on a 2-core CPU a stage-1 step of the embedded base takes as long on one thread as on two
(``benchmarks/bench_stage1.py --threads 1``: 280 ms both, batch 8, warm latent cache), and a stage-2 step
is faster on one. So the demo trains its independent models in ``workers`` processes of
``threads // workers`` threads each, longest runs first, and starts a run that needs another (stage 2
needs stage 1) as soon as that one has finished. Measured on 2026-12-03: two 200-step stage-1 runs side
by side took 0.73 of their time one by one (``benchmarks/bench_parallel_runs.py``, worker start-up
included), and the training runs of ``make demo`` 930 s against 1829 s one by one on two threads (those
including some 30 s of scoring the references).

A worker writes each run's log, progress bars included, to ``<log_dir>/<key>.log``; the caller sees one
progress bar over all runs. ``workers=1`` runs everything in this process, in order, as before.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRun:
    """One training run: ``train(*args)`` returns the trained model's folder.

    ``name`` is the model's name in reports, ``key`` names its log file, ``steps`` weighs it in the
    progress bar, and the run starts only after every run named in ``after`` has finished. ``train`` and
    ``args`` must be picklable (a module-level function and plain values) to run in a worker.
    """

    name: str
    key: str
    train: Callable[..., Path]
    args: tuple[Any, ...]
    steps: int
    after: tuple[str, ...] = field(default=())


@dataclass
class RunResults:
    """Each run's model folder and wall-clock seconds, by run name."""

    folders: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_all(runs: Sequence[TrainingRun], workers: int, log_dir: Path) -> RunResults:
    """Train ``runs`` in ``workers`` processes (in this process when 1) and return their folders.

    Runs start in the order given as soon as a worker is free and their ``after`` runs (listed earlier)
    are done, so list the longest first. When a run fails, no further run starts, the running ones finish
    (the demo reuses finished model folders when started again) and the error names the run and its log.
    """
    earlier: set[str] = set()  # runs listed before: so `after` can form no cycle, and one worker keeps order
    for run in runs:
        if run.name in earlier or not earlier.issuperset(run.after):
            raise ValueError(
                f"run {run.name!r}: run names must be unique and every `after` a run listed before it; "
                f"got {[r.name for r in runs]}"
            )
        earlier.add(run.name)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return _run_here(runs)
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, torch.get_num_threads() // workers)
    logger.info(
        "training %d runs in %d worker processes of %d thread(s) each; their logs: %s",
        len(runs), workers, threads, log_dir,
    )  # fmt: skip
    context = multiprocessing.get_context("spawn")  # fork would copy this process's OpenMP state
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)
    ) as pool:
        return _schedule(runs, workers, pool, log_dir)


def _run_here(runs: Sequence[TrainingRun]) -> RunResults:
    results = RunResults()
    for run in runs:  # in order: every `after` run is listed earlier
        start = time.perf_counter()
        results.folders[run.name] = run.train(*run.args)
        results.seconds[run.name] = time.perf_counter() - start
    return results


def _schedule(
    runs: Sequence[TrainingRun], workers: int, pool: ProcessPoolExecutor, log_dir: Path
) -> RunResults:
    results = RunResults()
    waiting = list(runs)
    running: dict[Future, TrainingRun] = {}
    progress = tqdm(total=sum(run.steps for run in runs), desc="training runs (steps)", unit="step")
    try:
        while waiting or running:
            while len(running) < workers:
                ready = next((r for r in waiting if all(d in results.folders for d in r.after)), None)
                if ready is None:
                    break
                waiting.remove(ready)
                running[pool.submit(_run_logged, ready, log_dir / f"{ready.key}.log")] = ready
            progress.set_postfix_str(", ".join(r.name for r in running.values()))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                try:
                    results.folders[run.name], results.seconds[run.name] = future.result()
                except Exception as error:  # the pool lets the running runs finish before this leaves
                    raise RuntimeError(
                        f"training run {run.name!r} failed ({error}); its log: {log_dir / run.key}.log"
                    ) from error
                progress.update(run.steps)
                logger.info(
                    "%s finished in %.0f s: %s",
                    run.name,
                    results.seconds[run.name],
                    results.folders[run.name],
                )
    finally:
        progress.close()
    return results


def _run_logged(run: TrainingRun, log_file: Path) -> tuple[Path, float]:
    """In a worker: ``run`` with its output (logging, warnings, progress bars) going to ``log_file``."""
    start = time.perf_counter()
    with open(log_file, "w", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream):
                folder = run.train(*run.args)
        finally:
            root.removeHandler(handler)
    return folder, time.perf_counter() - start
