"""Writing a pipeline folder into a directory that may already hold other things.

``save_pretrained`` first writes the complete pipeline into a hidden staging folder beside the target (so a
failure while serialising, e.g. a full disk, leaves the target untouched), then moves each file it owns into
the target with ``os.replace`` (atomic per file). The target's ``model_index.json`` is removed before the
first move and written last, so a folder interrupted half-way never looks like a complete pipeline; every
file the pipeline does not write (checkpoints, notes, other variants' weights) stays where it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stablemtl.utils.atomic import plain_modes, staging_folder

INDEX_NAME = "model_index.json"


def check_save_directory(save_directory: str | os.PathLike) -> Path:
    """The target as a ``Path``; ``ValueError`` when it exists and is not a directory (nothing is touched)."""
    path = Path(save_directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_directory {str(path)!r} is an existing file, not a folder")
    return path


def _is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".bin")) or (name.endswith(".json") and ".index." in name)


def _variant_of(name: str) -> str | None:
    """The variant infix of a weight file name, None without one: ``model.fp16.safetensors``,
    ``model.fp16-00001-of-00002.safetensors`` and ``model.safetensors.index.fp16.json`` are ``fp16``."""
    known = ("safetensors", "bin", "index", "json")
    extras = [part.split("-")[0] for part in name.split(".")[1:] if part not in known]
    return extras[0] if extras else None


def _stale_weights(old_folder: Path, new_files: set[str], variants: set[str | None]) -> Iterator[Path]:
    """Weight files of ``old_folder`` a new save of the same variant supersedes (e.g. shards of an earlier,
    differently sharded save), which would otherwise be loaded beside the new ones."""
    for path in old_folder.iterdir():
        if (
            path.is_file()
            and _is_weight_file(path.name)
            and path.name not in new_files
            and _variant_of(path.name) in variants
        ):
            yield path


def _check_conflicts(staged: Path, target: Path) -> None:
    """``ValueError`` when a file of the target stands where the pipeline writes a folder, or the reverse
    (checked before anything is moved)."""
    for folder, folders, files in os.walk(staged):
        relative = Path(folder).relative_to(staged)
        for name, want_dir in [(n, True) for n in folders] + [(n, False) for n in files]:
            existing = target / relative / name
            if existing.exists() and existing.is_dir() != want_dir:
                kind = "a folder" if want_dir else "a file"
                raise ValueError(f"cannot save: {existing} is in the way of {kind} the pipeline writes there")


def _merge(staged: Path, target: Path) -> None:
    """Move every file of ``staged`` into ``target`` (same relative path), one ``os.replace`` each, and drop
    superseded weight files of the component folders written."""
    for folder, _, files in os.walk(staged):
        folder = Path(folder)
        relative = folder.relative_to(staged)
        destination = target / relative
        destination.mkdir(parents=True, exist_ok=True)
        if relative != Path("."):
            weights = {name for name in files if _is_weight_file(name)}
            for stale in _stale_weights(destination, set(files), {_variant_of(w) for w in weights}):
                stale.unlink()
        for name in files:
            if relative == Path(".") and name == INDEX_NAME:
                continue
            os.replace(folder / name, destination / name)


@contextmanager
def staged_save(save_directory: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds, move its content into ``save_directory``.

    The staging folder must end up holding ``model_index.json``. A new target is created by one rename;
    an existing one is merged into file by file (see the module docstring).
    """
    target = check_save_directory(save_directory)
    staged = staging_folder(target, "saving-")
    try:
        yield staged
        if not (staged / INDEX_NAME).is_file():
            raise RuntimeError(f"the staged pipeline holds no {INDEX_NAME}")
        plain_modes(staged)
        if not target.exists():
            os.replace(staged, target)
            return
        _check_conflicts(staged, target)
        index = target / INDEX_NAME
        if index.exists():
            index.unlink()  # from now until the last step the folder is visibly incomplete
        _merge(staged, target)
        os.replace(staged / INDEX_NAME, index)
    finally:
        if staged.exists():
            shutil.rmtree(staged)
