"""The one atomic-write helper: complete or absent, never half-written."""

from __future__ import annotations

import stat

import pytest

from stablemtl.utils import atomic_path, atomic_write_text
from stablemtl.utils.atomic import atomic_folder


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_a_folder_in_the_way_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write_text(tmp_path / "x", "text")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_get_the_modes_a_plain_write_gives(tmp_path):
    # A temporary file or folder starts private (0600 / 0700); what appears must be as readable as
    # open() and mkdir() make it under the user's umask, or colleagues cannot read reports and models.
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    atomic_write_text(tmp_path / "atomic.txt", "x")
    with atomic_folder(tmp_path / "model") as staged:
        (staged / "weights.txt").write_text("x")
    assert _mode(tmp_path / "atomic.txt") == _mode(tmp_path / "plain.txt")
    assert _mode(tmp_path / "model") == _mode(tmp_path / "plain")
    assert (tmp_path / "model" / "weights.txt").read_text() == "x"


def test_a_failed_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    with atomic_folder(tmp_path / "model") as staged:
        (staged / "weights.txt").write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_folder(tmp_path / "model") as staged:
        (staged / "weights.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "model" / "weights.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
