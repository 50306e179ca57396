"""Write a synthetic source to disk as a ``datasets`` table: sharded, resumable, multi-process.

Rows are rendered in shards of ``shard_size`` rows; each shard is written to a temporary folder and
renamed into ``<out>/shards/`` in one step, so a shard on disk is always complete. A rerun with the same
settings skips finished shards (an interrupted run continues without duplicating or losing rows); when
every shard exists they are concatenated in row order into ``<out>`` (``datasets.load_from_disk(out)``
works) and the shards are removed. Row ``i`` depends only on (profile, split, shift, seed, i, size).

Several runs on one folder at once (two shells, two jobs) are serialised by a file lock on the folder:
the second waits, then finds the data set complete (or resumes what the first left unfinished).

Only folders that are empty or carry this tool's manifest (``make_data.json``) are written to; any other
folder is refused untouched. The manifest records a checksum per Arrow file (see ``manifest.py``). Worker
processes die with the process that started them, even when it is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from stablemtl.data.manifest import (
    MANIFEST,
    file_checksum,
    read_manifest,
    verify_data_files,
    write_manifest,
)
from stablemtl.data.profiles import check_split, get_profile
from stablemtl.data.storage import features_for, sample_to_row
from stablemtl.data.synthetic.sample import render_sample

logger = logging.getLogger(__name__)
SHARDS = "shards"
LOCK = ".make_data.lock"


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _init_worker(parent_pid: int) -> None:
    torch.set_num_threads(1)  # one thread per worker process: threads of several workers only contend
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when ``parent_pid`` dies, even by SIGKILL (no cleanup runs in the parent then).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere a daemon
    thread polls the parent id. Either way, a parent that died before this call is caught by the check.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): polling instead", ctypes.get_errno())
            _start_parent_watchdog(parent_pid)
    else:
        _start_parent_watchdog(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


def _start_parent_watchdog(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _render_shard(settings: dict, k: int, start: int, stop: int) -> int:
    """Render rows ``[start, stop)`` and write them atomically as shard ``k``; returns the row count."""
    out = Path(settings["out"])
    final = out / SHARDS / _shard_name(k)
    if final.exists():
        return stop - start
    prof = get_profile(settings["profile"])
    tasks = prof.tasks(settings["split"])
    rows = []
    for i in range(start, stop):
        sample = render_sample(
            prof, settings["seed"], settings["size"], settings["split"], settings["shift"], index=i
        )
        rows.append(sample_to_row(sample, i, tasks))
    table = Dataset.from_list(rows, features=features_for(tasks, settings["size"], settings["size"]))
    tmp = Path(tempfile.mkdtemp(prefix=f".{_shard_name(k)}-", dir=out / SHARDS))
    _quiet_save(table, tmp / "data")
    try:
        os.replace(tmp / "data", final)
    except OSError:  # another process finished the same shard first: keep theirs
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return stop - start


def _quiet_save(table: Dataset, path: Path) -> None:
    """``save_to_disk`` without its per-shard progress bar (our bar counts rows)."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        table.save_to_disk(str(path))
    finally:
        if not was_disabled:
            enable_progress_bars()


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder that holds anything but this tool's own data set."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r} is a file, not a folder; give a new or empty folder")
    if not out.is_dir() or (out / MANIFEST).exists():
        return
    # The lock and the manifest's temporary file are this tool's own (another run may be writing them).
    foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(".make_data."))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"out {str(out)!r} is not empty ({shown}) and holds no {MANIFEST} of stablemtl-make-data; "
            "refusing to write into a folder this tool did not create: give a new or empty folder"
        )


def _check_manifest(out: Path, settings: dict) -> None:
    old = read_manifest(out)
    if old is not None:
        diff = {k: (old.get(k), v) for k, v in settings.items() if k != "out" and old.get(k) != v}
        if diff:
            raise ValueError(
                f"{out} holds a data set made with other settings {diff} (old, new); use another --out "
                "or the same settings to resume"
            )
    else:
        write_manifest(out, settings)


def make_dataset(
    profile: str,
    n: int,
    out: str | os.PathLike,
    size: int = 128,
    split: str = "train",
    shift: bool = False,
    seed: int = 0,
    workers: int = 0,
    shard_size: int | None = None,
    progress: bool = False,
) -> Path:
    """Render ``n`` rows of ``profile`` into the ``datasets`` folder ``out`` and return its path.

    ``workers`` > 0 renders shards in that many processes (one torch thread each). Rerunning after an
    interruption resumes (with any number of workers); rerunning a finished folder with the same
    settings verifies its checksums (damaged or missing files are rendered again) and returns; other
    settings raise ``ValueError``, and so does an ``out`` that is a file or a non-empty folder without
    this tool's ``make_data.json`` (left untouched). A concurrent run on the same folder waits for this
    one (file lock). ``progress`` shows a row-count bar (tqdm, on stderr). Disk: about 0.6 MB per
    128 px row with every street label (labels are stored exactly, as float32).
    """
    prof = get_profile(profile)
    check_split(split)
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of rows, got {n}")
    if int(size) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if shard_size is not None and int(shard_size) < 1:
        raise ValueError(
            f"shard_size must be a positive number of rows (or None for the default), got {shard_size}"
        )
    out = Path(out)
    _check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a parent path is a file
        raise ValueError(f"out {str(out)!r} cannot be created ({type(err).__name__}: {err})") from err
    lock = FileLock(str(out / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another run is writing %s; waiting for it to finish", out)
        lock.acquire()
    try:
        return _make_locked(
            prof, int(n), out, int(size), split, bool(shift), int(seed), int(workers), shard_size, progress
        )
    finally:
        lock.release()


def _make_locked(
    prof,
    n: int,
    out: Path,
    size: int,
    split: str,
    shift: bool,
    seed: int,
    workers: int,
    shard_size: int | None,
    progress: bool,
) -> Path:
    """The body of :func:`make_dataset`, run while holding the folder's lock."""
    _check_out(out)  # again under the lock: another process may have filled the folder meanwhile
    if shard_size is None and (out / MANIFEST).exists():
        shard_size = read_manifest(out).get("shard_size")  # resume as started
    # The default depends on n only, so a run may resume with another number of workers.
    shard_size = int(shard_size or max(1, min(64, -(-n // 8))))
    settings = {
        "profile": prof.name,
        "n": n,
        "size": size,
        "split": split,
        "shift": shift,
        "seed": seed,
        "shard_size": shard_size,
        "out": str(out),
    }
    _check_manifest(out, settings)
    if (out / "state.json").exists():
        try:
            verify_data_files(out)  # every listed file present and, when recorded, its checksum equal
            logger.info("%s is complete", out)
            return out
        except ValueError as err:
            # Rows are a pure function of the settings, so rendering again restores exactly what was lost.
            logger.warning("%s; rendering the data set again", err)
            (out / "state.json").unlink()
    (out / SHARDS).mkdir(exist_ok=True)
    jobs = [(k, s, min(s + shard_size, n)) for k, s in enumerate(range(0, n, shard_size))]
    todo = [job for job in jobs if not (out / SHARDS / _shard_name(job[0])).exists()]
    bar = tqdm(total=n, initial=n - sum(b - a for _, a, b in todo), disable=not progress, desc=prof.name)
    if workers > 0 and len(todo) > 1:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(_render_shard, settings, *job) for job in todo]
            try:
                for future in as_completed(futures):
                    bar.update(future.result())
            except BaseException:
                # Interrupted: drop queued shards; finished ones stay on disk for the resume.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    else:
        for job in todo:
            bar.update(_render_shard(settings, *job))
    bar.close()
    _assemble(out, len(jobs))
    return out


def _assemble(out: Path, n_shards: int) -> None:
    """Concatenate the shards in order into ``out`` (state.json is written last: it marks completion)."""
    if (out / "state.json").exists():  # a concurrent run with the same settings finished first
        return
    parts = []
    for k in range(n_shards):
        shard = out / SHARDS / _shard_name(k)
        try:
            parts.append(load_from_disk(str(shard)))
        except Exception as err:  # e.g. a disk error after the atomic rename; the other shards are fine
            raise ValueError(
                f"shard {shard} is damaged ({type(err).__name__}: {err}); delete that folder and rerun to "
                "render it again"
            ) from err
    table = concatenate_datasets(parts)
    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=out))
    _quiet_save(table, tmp / "data")
    files = sorted((tmp / "data").iterdir(), key=lambda p: p.name == "state.json")
    # Checksums go into the manifest before the files move in; state.json, moved last, marks completion.
    manifest = read_manifest(out) or {}
    manifest["checksums"] = {f.name: file_checksum(f) for f in files}  # Arrow data and its JSON metadata
    write_manifest(out, manifest)
    for f in files:
        os.replace(f, out / f.name)
    shutil.rmtree(tmp, ignore_errors=True)
    del parts, table
    shutil.rmtree(out / SHARDS, ignore_errors=True)
