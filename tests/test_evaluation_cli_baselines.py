"""``stablemtl-eval`` recognises a saved baseline folder by its config.json and scores it like a pipeline."""

import json

import pytest
from test_models_hitt import tiny_hitt
from test_models_prototype import tiny_model as tiny_prototype

from stablemtl.cli import evaluate as cli
from stablemtl.data.generate import make_dataset


@pytest.mark.parametrize("kind", ["hitt", "prototype"])
def test_cli_scores_a_saved_baseline_model(tmp_path, kind):
    data = make_dataset("street", 2, tmp_path / "street", size=32, seed=2)
    tasks = ["depth", "semantic", "optical_flow"]
    model = tiny_hitt(tasks) if kind == "hitt" else tiny_prototype()  # the prototype model has all seven
    model.save_pretrained(tmp_path / kind)
    assert json.loads((tmp_path / kind / "config.json").read_text())["model_type"] == kind
    argv = ["--model", str(tmp_path / kind), "--data", str(data), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--no_progress", "--num_grids", "1"]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"][0]
    scored = {t: e["num_images"] for t, e in report["tasks"].items()}
    # Street renders label depth, normal, semantic and both flows: the model's tasks among those are scored.
    expected = set(tasks) if kind == "hitt" else {"depth", "normal", "semantic", "optical_flow", "scene_flow"}
    assert set(scored) == expected and set(scored.values()) == {2}
    assert 0.0 <= report["tasks"]["semantic"]["metrics"]["miou"] <= 100.0  # a percentage


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segnet"}))
    with pytest.raises(ValueError, match="model_type 'segnet'"):
        cli.load_predictor(str(tmp_path))
