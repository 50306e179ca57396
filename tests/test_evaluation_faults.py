"""Faults in evaluation: non-finite predictions, tasks that cannot be scored, bad references and indexes."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from evaluation_fixtures import ALL_TASKS, ConstantPredictor, make_sample
from PIL import Image

import stablemtl.cli.evaluate as cli
from stablemtl.evaluation import build_reference, evaluate, evaluate_models, render_markdown, write_report
from stablemtl.evaluation.references import delta_m_table
from stablemtl.tasks import Task, register_task, unregister_task


class _Brightness(Task):
    """A task without a built-in accumulator: scored through its own ``metrics``."""

    name = "fault_brightness"
    prompt = "brightness"
    label_channels = 1
    prediction_channels = 1
    output_space = "mean brightness (B,1,H,W) in [0,1]"
    primary_metric = "mae"
    higher_is_better = False

    def encode(self, label, valid):
        return label.expand(*label.shape[:-3], 3, *label.shape[-2:]) * 2 - 1, valid

    def decode(self, image3):
        return (image3.mean(dim=-3, keepdim=True) + 1) / 2

    def visualize(self, prediction):
        return Image.fromarray((prediction[0].nan_to_num().clamp(0, 1).numpy() * 255).astype(np.uint8))

    def metrics(self, prediction, label, valid):
        return {"mae": float((prediction - label)[0][valid].abs().mean())}


class _Poisoned(ConstantPredictor):
    """The constant predictor with ``value`` written at one pixel of the first image of every batch."""

    def __init__(self, value: float, pixel=(3, 5)) -> None:
        super().__init__()
        self.value, self.pixel = value, pixel

    def predict(self, images, next_images, tasks):
        out = {}
        b, _, h, w = images.shape
        for task in tasks:
            if task == "semantic":  # class scores, so that a NaN can reach the metric
                pred = torch.zeros(b, 8, h, w)
            elif task == _Brightness.name:
                pred = torch.full((b, 1, h, w), 0.5)
            else:
                pred = super().predict(images, next_images, [task])[task].clone()
            pred[0, :, self.pixel[0], self.pixel[1]] = self.value
            out[task] = pred
        return out


@pytest.fixture()
def brightness_samples():
    register_task(_Brightness())
    samples = []
    for i in range(3):
        sample = make_sample(i, ALL_TASKS)
        sample["labels"][_Brightness.name] = torch.full((1, 16, 16), 0.2 + 0.1 * i)
        sample["valid"][_Brightness.name] = torch.ones(16, 16, dtype=torch.bool)
        for valid in sample["valid"].values():
            valid[3, 5] = True  # the poisoned pixel is a valid one
        samples.append(sample)
    yield samples
    unregister_task(_Brightness.name)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_predictions_are_counted_and_never_scored(brightness_samples, value, caplog):
    clean = evaluate(_Poisoned(0.5), brightness_samples, progress=False, batch_size=3)  # finite "poison"
    assert all(entry["num_nonfinite_predictions"] == 0 for entry in clean["tasks"].values())
    with caplog.at_level(logging.WARNING, logger="stablemtl.evaluation.evaluator"):
        report = evaluate(_Poisoned(value), brightness_samples, progress=False, batch_size=3)
    assert sorted(report["tasks"]) == sorted([*ALL_TASKS, _Brightness.name])  # every metric family
    for task, entry in report["tasks"].items():
        primary = entry["primary_metric"]
        assert math.isfinite(clean["tasks"][task]["metrics"][primary]), task
        assert entry["num_nonfinite_predictions"] == 1 and entry["num_images"] == 3, task
        assert all(math.isnan(v) for v in entry["metrics"].values()), (task, entry["metrics"])
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "1 of 3 depth predictions hold NaN or inf" in warned
    markdown = render_markdown([report], None, None, {})
    assert "- model: 1 of 3 albedo predictions hold NaN or inf, so its metrics are not computed." in markdown


def test_a_task_without_valid_label_pixels_is_listed_as_skipped(brightness_samples, caplog):
    for sample in brightness_samples:
        sample["valid"]["normal"][:] = False
    with caplog.at_level(logging.WARNING, logger="stablemtl.evaluation.evaluator"):
        report = evaluate(_Poisoned(0.5), brightness_samples, tasks=["depth", "normal"], progress=False)
    assert list(report["tasks"]) == ["depth"]
    assert report["skipped_tasks"] == {"normal": "no sample has a valid label pixel for it"}
    assert "task 'normal' is not scored: no sample has a valid label pixel" in caplog.text


def test_nonfinite_values_at_invalid_pixels_do_not_count(brightness_samples):
    for sample in brightness_samples:
        sample["valid"]["depth"][3, 5] = False
    report = evaluate(_Poisoned(math.nan), brightness_samples, tasks=["depth"], progress=False)
    assert report["tasks"]["depth"]["num_nonfinite_predictions"] == 0
    assert math.isfinite(report["tasks"]["depth"]["metrics"]["abs_rel"])


@pytest.fixture()
def depth_only(monkeypatch):
    """A depth-only model on data labelling depth and normal; records which models were loaded."""
    samples = [make_sample(i, ("depth", "normal")) for i in range(2)]
    loaded = []

    def load_predictor(path, device="auto", dtype="fp32", cache_dir=None, revision=None):
        loaded.append(path)
        return ConstantPredictor(tasks=["depth"])

    monkeypatch.setattr(cli, "load_predictor", load_predictor)
    monkeypatch.setattr(cli, "load_samples", lambda paths, limit=None: samples)
    return loaded


def test_nothing_scored_exits_non_zero(tmp_path, depth_only):
    argv = ["--model", "runs/depth", "--data", "d", "--out", str(tmp_path / "e"), "--no_progress"]
    with pytest.raises(SystemExit, match=r"nothing was scored.*normal \(the model does not predict it"):
        cli.main([*argv, "--tasks", "normal"])
    with pytest.raises(SystemExit, match=r"nothing was scored.*semantic \(no sample labels it\)"):
        cli.main([*argv, "--tasks", "semantic"])
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_a_labelled_task_the_model_lacks_is_warned_and_listed(tmp_path, depth_only, caplog):
    argv = ["--model", "runs/depth", "--data", "d", "--out", str(tmp_path / "e"), "--no_progress"]
    with caplog.at_level(logging.WARNING):
        assert cli.main(argv) == 0
    assert "model 'depth': task 'normal' is not scored: the model does not predict it" in caplog.text
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())["models"][0]
    assert list(report["tasks"]) == ["depth"] and list(report["skipped_tasks"]) == ["normal"]
    assert (
        "- depth: normal is not scored: the model does not predict it"
        in (tmp_path / "e" / "report.md").read_text()
    )


def _write_reference(path, entry):
    path.write_text(json.dumps({"models": [{"name": "stl", "tasks": {"depth": entry}}]}))
    return str(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"metrics": {"abs_rel": 0.1}}, "'primary_metric' must name one of its metrics"),
        ({"metrics": {"abs_rel": "0.1"}, "primary_metric": "abs_rel"}, "must be a number or null"),
        ({"metrics": {"abs_rel": 0.1}, "primary_metric": "rmse"}, "'rmse' is not among its metrics"),
    ],
)
def test_a_bad_reference_is_refused_before_evaluating(tmp_path, depth_only, entry, message):
    ref = _write_reference(tmp_path / "ref.json", entry)
    argv = ["--model", "runs/depth", "--data", "d", "--out", str(tmp_path / "e"), "--reference", ref]
    where = r"--reference: '.*ref\.json', model 'stl', task 'depth'"
    with pytest.raises(SystemExit, match=f"{where}.*{message}"):
        cli.main(argv)
    assert depth_only == []  # no model was loaded, nothing evaluated
    with pytest.raises(SystemExit, match=r"--reference: report file '.*missing\.json' does not exist"):
        cli.main([*argv[:-1], str(tmp_path / "missing.json")])


def test_model_index_class_name_errors_name_the_file(tmp_path):
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": ["pipeline_stablemtl", "StableMTLPipeline", "extra"]}))
    with pytest.raises(ValueError, match=r"model_index\.json: '_class_name' must name the pipeline class"):
        cli.load_predictor(str(tmp_path))
    index.write_text(json.dumps({"_class_name": 3}))
    with pytest.raises(ValueError, match="got 3"):
        cli.load_predictor(str(tmp_path))
    index.write_text('{"_class_name": ')
    with pytest.raises(ValueError, match=r"model_index\.json cannot be read as JSON"):
        cli.load_predictor(str(tmp_path))


def test_delta_m_is_undefined_for_a_model_with_nonfinite_predictions(brightness_samples, tmp_path):
    reference = build_reference([evaluate(_Poisoned(0.5), brightness_samples, progress=False, name="ref")])
    clean = evaluate(_Poisoned(0.5), brightness_samples, progress=False, name="clean")
    broken = evaluate(_Poisoned(math.nan), brightness_samples, tasks=["depth"], progress=False, name="nan")
    broken["tasks"]["normal"] = clean["tasks"]["normal"]  # good on one task, NaN on the other
    table = delta_m_table([clean, broken], reference)
    assert table["clean"]["delta_m"] == pytest.approx(0.0)
    assert table["nan"]["delta_m"] is None and table["nan"]["nonfinite_tasks"] == ["depth"]


def test_out_naming_a_file_is_refused_before_evaluating(tmp_path, depth_only):
    (tmp_path / "out").write_text("x")
    with pytest.raises(SystemExit, match=r"--out .* is a file"):
        cli.main(["--model", "runs/depth", "--data", "d", "--out", str(tmp_path / "out")])
    assert depth_only == []


def test_report_with_nonfinite_and_class_score_predictions_is_written(brightness_samples, tmp_path):
    evaluation = evaluate_models(
        {"nan": _Poisoned(math.nan)}, brightness_samples, progress=False, num_visuals=1
    )  # semantic as (B, 8, H, W) class scores with one NaN pixel
    payload = write_report(tmp_path, evaluation.reports, None, evaluation.visuals)
    assert (tmp_path / "figures" / "grid_000_synthetic.png").exists()
    saved = json.loads((tmp_path / "metrics.json").read_text())["models"][0]["tasks"]["semantic"]
    assert saved["metrics"]["miou"] is None and saved["num_nonfinite_predictions"] == 1
    assert payload["models"][0]["name"] == "nan"
