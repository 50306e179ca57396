"""The demo's training runs: an interrupted run continues from its checkpoint on the next `make demo`."""

import logging
from argparse import Namespace

from stablemtl.cli.demo_training import train_stage1
from stablemtl.data import make_dataset


def test_an_interrupted_demo_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, one_thread, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = [make_dataset("street", 12, tmp_path / "data", size=32, split="train", seed=0)]
    args = Namespace(config=None, base=None, seed=0, validation_data=None)
    folder = train_stage1(args, tmp_path, "run", data, ["depth"], 2)
    assert (folder / "checkpoint-2").is_dir()
    (folder / "model_index.json").unlink()  # stopped after its last checkpoint, before the model was saved
    with caplog.at_level(logging.INFO, logger="stablemtl"):
        assert train_stage1(args, tmp_path, "run", data, ["depth"], 2) == folder
    assert (folder / "model_index.json").is_file()
    assert f"resumed from {folder / 'checkpoint-2'} at step 2" in caplog.text
