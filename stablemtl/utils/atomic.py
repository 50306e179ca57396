"""The one atomic-write helper: a file or folder appears complete under its name, or not at all.

Writers produce a temporary file (or folder) in the destination's folder (same file system, so the final
``os.replace`` is atomic on POSIX and Windows) and rename it into place only after it is complete and
flushed; an interrupted writer leaves at most a hidden ``.<name>.*`` temporary behind. What appears gets
the permissions a plain ``open`` or ``mkdir`` would give it under the user's umask (the temporaries start
private).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The caller writes the whole file to the yielded path (any writer that takes a path: ``save_file``,
    ``Image.save``, ``json.dump`` into ``open(tmp, "w")``). Parent folders are created.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; cannot write a file there")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600), and some writers (safetensors) replace it with a private
        # file of their own: what appears gets the mode a plain open() would give it.
        tmp_path.chmod(0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def staging_folder(target: str | os.PathLike, label: str = "") -> Path:
    """A new empty hidden folder beside ``target`` (parents created), with the mode ``mkdir`` would give
    it: where a folder is written before it is moved into place. The caller removes it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.{label}", dir=target.parent))
    staged.chmod(0o777 & ~current_umask())  # mkdtemp makes it private (0700)
    return staged


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` (a folder there is
    removed first, so a reader sees the old folder, briefly none, or the new one, never half of one); on
    error it is removed and ``path`` is left as it was."""
    path = Path(path)
    staged = staging_folder(path)
    try:
        yield staged
        plain_modes(staged)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staged, path)
    finally:
        if staged.exists():
            shutil.rmtree(staged)


def plain_modes(folder: str | os.PathLike) -> None:
    """Give every file and folder under ``folder`` the mode a plain ``open`` or ``mkdir`` would: writers
    such as safetensors (hence diffusers' ``save_pretrained``) leave their files private (0600)."""
    mask = current_umask()
    for path in Path(folder).rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
