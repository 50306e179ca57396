"""Training runs side by side: worker processes, the order of `after`, per-run logs and failures."""

import json
import logging
import time
from pathlib import Path

import pytest

from stablemtl.cli.parallel_runs import TrainingRun, run_all


def record_run(folder: Path, seconds: float) -> Path:
    """A stand-in training run (module level, so a spawned worker can import it): logs, waits, records."""
    start = time.time()
    logging.getLogger("stablemtl.test").info("training %s", folder.name)
    print("a line on stdout")
    time.sleep(seconds)
    folder.mkdir(parents=True)
    (folder / "times.json").write_text(json.dumps([start, time.time()]))
    return folder


def failing_run(message: str) -> Path:
    raise ValueError(message)


def _times(folder: Path) -> tuple[float, float]:
    return tuple(json.loads((folder / "times.json").read_text()))


def test_runs_share_two_workers_and_a_dependent_run_waits(tmp_path):
    runs = [
        TrainingRun("first", "first", record_run, (tmp_path / "first", 3.0), steps=10),
        TrainingRun(
            "after first", "after_first", record_run, (tmp_path / "second", 0.1), 1, after=("first",)
        ),
        TrainingRun("beside", "beside", record_run, (tmp_path / "beside", 0.1), steps=1),
    ]
    results = run_all(runs, workers=2, log_dir=tmp_path / "logs")
    assert results.folders == {
        "first": tmp_path / "first",
        "after first": tmp_path / "second",
        "beside": tmp_path / "beside",
    }
    first, second, beside = (_times(tmp_path / name) for name in ("first", "second", "beside"))
    assert second[0] >= first[1]  # waited for its dependency
    assert beside[0] < first[1]  # ran side by side with it
    assert results.seconds["first"] >= 3.0
    log = (tmp_path / "logs" / "first.log").read_text()
    assert "training first" in log and "a line on stdout" in log


def test_one_worker_runs_in_this_process_in_order(tmp_path):
    runs = [
        TrainingRun("a", "a", record_run, (tmp_path / "a", 0.0), 1),
        TrainingRun("b", "b", record_run, (tmp_path / "b", 0.0), 1, after=("a",)),
    ]
    results = run_all(runs, workers=1, log_dir=tmp_path / "logs")
    assert list(results.folders) == ["a", "b"]
    assert _times(tmp_path / "a")[1] <= _times(tmp_path / "b")[0]
    assert not (tmp_path / "logs").exists()  # output stays on this terminal


def test_a_failed_run_names_itself_and_its_log_and_stops_what_waits_for_it(tmp_path):
    runs = [
        TrainingRun("broken", "broken", failing_run, ("labels are NaN",), 1),
        TrainingRun("needs broken", "needs", record_run, (tmp_path / "never", 0.0), 1, after=("broken",)),
    ]
    with pytest.raises(RuntimeError, match=r"'broken' failed \(labels are NaN\).*broken\.log"):
        run_all(runs, workers=2, log_dir=tmp_path / "logs")
    assert not (tmp_path / "never").exists()


def test_bad_run_lists_are_refused(tmp_path):
    run = TrainingRun("a", "a", record_run, (tmp_path / "a", 0.0), 1)
    with pytest.raises(ValueError, match="unique"):
        run_all([run, run], workers=2, log_dir=tmp_path)
    with pytest.raises(ValueError, match="after"):
        run_all([TrainingRun("b", "b", record_run, (tmp_path, 0.0), 1, after=("c",))], 2, tmp_path)
    # A run waiting for one listed after it (a cycle, or out of order for one worker) is refused too.
    later = TrainingRun("b", "b", record_run, (tmp_path / "b", 0.0), 1, after=("a",))
    with pytest.raises(ValueError, match=r"'b'.*listed before it"):
        run_all([later, run], workers=2, log_dir=tmp_path)
    with pytest.raises(ValueError, match="workers"):
        run_all([run], workers=0, log_dir=tmp_path)
