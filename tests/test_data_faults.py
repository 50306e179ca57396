"""Faults around data sets on disk: foreign or damaged folders, flipped bytes, killed generator runs."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stablemtl.cli.make_data import main
from stablemtl.data import load_source, make_dataset
from stablemtl.data import manifest as manifest_module
from stablemtl.data.manifest import MANIFEST


def _labels_equal(a, b):
    assert torch.equal(a["image"], b["image"])
    for task in a["labels"]:
        assert torch.equal(a["labels"][task], b["labels"][task])


def test_a_folder_without_the_manifest_is_refused_untouched(tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "shards").mkdir(parents=True)
    (user / "shards" / "thesis.tex").write_text("months of work")
    (user / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"not empty \(notes\.txt, shards\).*no make_data\.json"):
        make_dataset("flying", 1, user, size=16)
    assert (user / "shards" / "thesis.tex").read_text() == "months of work"
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "shards"]
    # A data set whose manifest was lost is not this tool's to overwrite with another profile.
    indoor = make_dataset("indoor", 2, tmp_path / "indoor", size=16)
    (indoor / MANIFEST).unlink()
    argv = ["--profile", "street", "--n", "3", "--out", str(indoor), "--size", "16"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "holds no make_data.json" in captured.err and "wrote" not in captured.out
    assert not (indoor / MANIFEST).exists() and load_source(indoor).source == "indoor"
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert len(load_source(make_dataset("flying", 1, tmp_path / "empty", size=16))) == 1


def test_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "data.txt"
    target.write_text("not a folder")
    assert main(["--profile", "flying", "--n", "1", "--out", str(target), "--size", "16"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["--profile", "flying", "--n", "1", "--out", str(target / "sub"), "--size", "16"]) == 2
    assert "cannot be created" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


def test_bad_seed_or_shard_size_is_refused_before_the_folder_is_touched(tmp_path, capsys):
    for flag, value, message in [("--seed", "-5", "seed must be >= 0"), ("--shard-size", "-1", "shard_size")]:
        out = tmp_path / flag.strip("-")
        assert main(["--profile", "flying", "--n", "2", "--out", str(out), "--size", "16", flag, value]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="shard_size must be a positive number"):
        make_dataset("flying", 2, tmp_path / "zero", size=16, shard_size=0)


def test_a_state_json_without_its_arrow_file_is_not_complete(tmp_path):
    out = make_dataset("flying", 2, tmp_path / "f", size=16, seed=3)
    before = [load_source(out)[i] for i in range(2)]
    for arrow in out.glob("*.arrow"):
        arrow.unlink()
    with pytest.raises(ValueError, match=r"data-00000-of-00001\.arrow"):
        load_source(out)
    make_dataset("flying", 2, out, size=16, seed=3)  # renders the lost rows again, exactly
    after = load_source(out)
    for i in range(2):
        _labels_equal(before[i], after[i])


def test_a_corrupt_manifest_is_named(tmp_path, capsys):
    out = make_dataset("flying", 1, tmp_path / "f", size=16)
    (out / MANIFEST).write_text('{"profile": "fly')
    assert main(["--profile", "flying", "--n", "1", "--out", str(out), "--size", "16"]) == 2
    assert f"{out / MANIFEST} (the stablemtl-make-data manifest) cannot be read" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"make_data\.json .*cannot be read"):
        load_source(out)


def test_flipped_bytes_in_an_arrow_file_are_detected_on_load(tmp_path):
    out = make_dataset("flying", 2, tmp_path / "f", size=16)
    arrow = out / "data-00000-of-00001.arrow"
    original = arrow.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF  # a byte inside the label buffers: Arrow alone reads it without error
    arrow.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"data-00000-of-00001\.arrow is damaged: its checksum differs"):
        load_source(out)
    rows = [load_source(make_dataset("flying", 2, tmp_path / "g", size=16))[i] for i in range(2)]
    make_dataset("flying", 2, out, size=16)  # the same settings again render the damaged data again
    assert arrow.read_bytes() == original
    for i in range(2):
        _labels_equal(load_source(out)[i], rows[i])
    recorded = json.loads((out / MANIFEST).read_text())["checksums"]
    assert sorted(recorded) == sorted([arrow.name, "dataset_info.json", "state.json"])
    assert all(value.startswith("sha256:") for value in recorded.values())
    # The metadata is covered too: a changed feature type would decode the same bytes differently.
    arrow.write_bytes(original)
    info = out / "dataset_info.json"
    info_text = info.read_text()
    assert '"float32"' in info_text
    info.write_text(info_text.replace('"float32"', '"float16"', 1))
    with pytest.raises(ValueError, match=r"dataset_info\.json is damaged"):
        load_source(out)
    info.write_text(info_text)
    assert len(load_source(out)) == 2
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["checksums"]["../elsewhere.txt"] = "sha256:0"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"lists '\.\./elsewhere\.txt', which is not a file name"):
        load_source(out)


def test_a_data_set_without_checksums_loads_with_one_warning(tmp_path, caplog):
    out = make_dataset("flying", 1, tmp_path / "f", size=16)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["checksums"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    manifest_module._warned_unverified.discard(str(out.resolve()))
    with caplog.at_level(logging.WARNING, logger="stablemtl.data.manifest"):
        assert len(load_source(out)) == 1 and len(load_source(out)) == 1
    warnings = [r for r in caplog.records if "records no checksums" in r.getMessage()]
    assert len(warnings) == 1 and str(out) in warnings[0].getMessage()


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_make_data_is_killed(tmp_path):
    out = tmp_path / "indoor"
    argv = ["--profile", "indoor", "--n", "400", "--size", "16", "--shard-size", "1", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from stablemtl.cli.make_data import main; sys.exit(main(sys.argv[1:]))"
    parent = subprocess.Popen(
        [sys.executable, "-c", code, *argv, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # Wait until the workers run (a shard is written) so that they are rendering when killed.
        while time.monotonic() < deadline and not any((out / "shards").glob("shard-*")):
            assert parent.poll() is None, "make-data ended before its workers started"
            time.sleep(0.2)
        workers = {pid for pid in _children(parent.pid) if b"spawn_main" in _cmdline(pid)}
        assert len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # do not leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
