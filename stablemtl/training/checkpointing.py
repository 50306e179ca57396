"""Atomic, rotated ``accelerate`` checkpoints named ``checkpoint-<optimizer step>`` (as diffusers' examples).

A checkpoint is written by ``accelerator.save_state`` into a hidden temporary folder and renamed into
place only when every process has finished writing: a folder named ``checkpoint-N`` is always
complete, so a run killed while saving resumes from the previous one. Rotation runs after the rename
and keeps the newest ``total_limit`` complete checkpoints, so the last complete one is never deleted.

The sampler and EMA states are not registered with ``accelerator.register_for_checkpointing`` (that
pickles them): :func:`save_checkpoint` writes them as safetensors + JSON into the temporary folder
(see :mod:`stablemtl.training.extra_state`), so they are renamed into place with the rest. accelerate's
own files (``optimizer.bin``, ``scheduler.bin``, ``random_states_<rank>.pkl``) stay as it writes them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError

from stablemtl.data.sampler import TaskIsolatedSampler
from stablemtl.training.extra_state import load_extra_state, save_extra_state
from stablemtl.utils.atomic import plain_modes

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """Turn ``--resume_from_checkpoint`` (a folder or ``"latest"``) into a checkpoint folder or ``None``.

    ``"latest"`` with no checkpoint yet starts a fresh run (as in diffusers' examples); a named
    folder that does not exist is an error.
    """
    if resume is None:
        return None
    if resume == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            logger.info("no checkpoint in %s yet: starting a new run", output_dir)
        return path
    path = Path(resume)
    if not path.is_dir():
        path = Path(output_dir) / resume
    if not path.is_dir() or not _NAME.match(path.name):
        raise ValueError(f"resume_from_checkpoint {resume!r} is not a checkpoint-<step> folder (or 'latest')")
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a ``checkpoint-<step>`` folder was saved at."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named checkpoint-<step>")
    return int(match.group(1))


def claim_output_dir(output_dir: str | os.PathLike, resuming: bool, overwrite: bool) -> None:
    """Make ``output_dir`` this run's, refusing to mix two runs (main process only).

    A folder holding checkpoints of another run is refused unless the run resumes from them, or
    ``overwrite`` is set, which deletes them (their rotation and ``latest`` would otherwise mix with
    the new run's). Other files in the folder are left alone.
    """
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"output_dir {root} is a file, not a folder")
    found = [p.name for _, p in list_checkpoints(root)]
    if found and not resuming:
        if not overwrite:
            raise ValueError(
                f"output_dir {root} already holds checkpoints of another run ({', '.join(found)}); "
                "continue it with --resume_from_checkpoint latest, choose another --output_dir, or pass "
                "--overwrite_output_dir to delete them and start afresh"
            )
        for name in found:
            logger.warning("--overwrite_output_dir: deleting %s", root / name)
            shutil.rmtree(root / name)
    root.mkdir(parents=True, exist_ok=True)


def load_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    sampler: TaskIsolatedSampler,
    ema: EMAModel | None,
    allow_inexact: bool = False,
) -> None:
    """Restore everything :func:`save_checkpoint` wrote, or fail naming the broken file.

    accelerate only logs (at INFO) when a process's RNG state cannot be loaded, which silently breaks the
    bit-exact resume: that is an error here unless ``allow_inexact``, then a warning.
    """
    rng_file = folder / f"random_states_{accelerator.process_index}.pkl"
    notes = _RecordingHandler()
    accelerate_logger = logging.getLogger("accelerate.checkpointing")
    level = accelerate_logger.level
    accelerate_logger.addHandler(notes)
    accelerate_logger.setLevel(logging.INFO)
    try:
        accelerator.load_state(str(folder))
        load_extra_state(folder, sampler, ema, accelerator.device)
    except (SafetensorError, OSError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"resume_from_checkpoint {folder}: a file is unreadable or truncated ({error}); resume from an "
            f"earlier checkpoint instead: {_earlier(folder)}"
        ) from error
    finally:
        accelerate_logger.removeHandler(notes)
        accelerate_logger.setLevel(level)
    if any("Could not load random states" in m for m in notes.messages):
        message = (
            f"resume_from_checkpoint {folder}: the RNG states ({rng_file.name}) could not be restored, so "
            "the resumed run will not match an uninterrupted one"
        )
        if not allow_inexact:
            raise ValueError(f"{message}; pass --allow_inexact_resume to continue anyway")
        logger.warning(message)
    if sampler.windows_done != checkpoint_step(folder):
        raise ValueError(
            f"{folder}: sampler position {sampler.windows_done} != step {checkpoint_step(folder)}"
        )


def _earlier(folder: Path) -> str:
    step = checkpoint_step(folder)
    earlier = [p.name for s, p in list_checkpoints(folder.parent) if s < step]
    return f"--resume_from_checkpoint {earlier[-1]}" if earlier else "none is left (start a new run)"


class _RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def remove_incomplete(output_dir: str | os.PathLike) -> None:
    """Delete temporary folders left by a run killed while saving (main process only).

    A ``.tmp-checkpoint-N-old`` folder is a complete checkpoint moved aside while step ``N`` was saved
    again: when ``checkpoint-N`` is missing (killed between the two renames) it is put back, not deleted.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return
    for path in sorted(root.glob(f"{_TMP_PREFIX}*-old")):
        final = root / f"checkpoint-{path.name[len(_TMP_PREFIX) : -len('-old')]}"
        if _NAME.match(final.name) and not final.exists():
            logger.info("restoring %s from %s (a save was interrupted)", final, path)
            os.replace(path, final)
    for path in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    total_limit: int | None = None,
    sampler: TaskIsolatedSampler | None = None,
    ema: EMAModel | None = None,
) -> Path:
    """Save the full training state at optimizer ``step``; call on every process. Returns the folder.

    ``sampler`` (and ``ema``) are written as ``sampler.safetensors`` (and ``ema.safetensors`` +
    ``ema.json``) next to accelerate's files, before the folder is renamed into place.
    """
    if ema is not None and sampler is None:
        raise ValueError(
            "save_checkpoint: ema given without sampler; pass both (the loop always has a sampler)"
        )
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f"{_TMP_PREFIX}{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process and sampler is not None:
        save_extra_state(tmp, sampler, ema)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        plain_modes(tmp)  # safetensors leaves its files private; a checkpoint is as readable as any file
        if final.exists():  # the same step saved again (e.g. the final step after a resume)
            old = root / f"{_TMP_PREFIX}{step}-old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _rotate(root, total_limit)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _rotate(root: Path, total_limit: int | None) -> None:
    if total_limit is None:
        return
    found = list_checkpoints(root)
    for _, path in found[: max(len(found) - total_limit, 0)]:
        logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", path, total_limit)
        shutil.rmtree(path)
