"""``stablemtl-eval`` recognises a saved HiTT folder by its config.json and scores it like a pipeline."""

import json

import pytest
from test_models_hitt import tiny_hitt

from stablemtl.cli import evaluate as cli
from stablemtl.data.generate import make_dataset


def test_cli_scores_a_saved_hitt_model(tmp_path):
    data = make_dataset("street", 2, tmp_path / "street", size=32, seed=2)
    tiny_hitt(["depth", "semantic", "optical_flow"]).save_pretrained(tmp_path / "hitt")
    argv = ["--model", str(tmp_path / "hitt"), "--data", str(data), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--no_progress", "--num_grids", "1"]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"][0]
    assert {t: e["num_images"] for t, e in report["tasks"].items()} == {
        "depth": 2,
        "semantic": 2,
        "optical_flow": 2,
    }
    assert 0.0 <= report["tasks"]["semantic"]["metrics"]["miou"] <= 1.0


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segnet"}))
    with pytest.raises(ValueError, match="model_type 'segnet'"):
        cli.load_predictor(str(tmp_path))
