import copy
import json
import math

import pytest
from evaluation_fixtures import ConstantPredictor, OraclePredictor, make_sample
from PIL import Image

from stablemtl.evaluation import build_reference, evaluate_models, load_reports, merge_reports, write_report


@pytest.fixture(scope="module")
def evaluation():
    samples = [
        make_sample(0, ("depth", "normal")),
        make_sample(1, ("semantic", "depth"), source="street"),
        make_sample(2, ("optical_flow",), source="flow"),
    ]
    return evaluate_models(
        {"oracle": OraclePredictor(samples), "constant": ConstantPredictor()},
        samples,
        progress=False,
        num_visuals=2,
    )


def test_write_report_with_reference(tmp_path, evaluation):
    reference = build_reference([evaluation.reports["constant"]])
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "grid_007_old.png").write_bytes(b"from an earlier report")
    payload = write_report(tmp_path, evaluation.reports, reference, evaluation.visuals)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["name"] for m in data["models"]] == ["oracle", "constant"]
    assert data["delta_m"]["constant"]["delta_m"] == pytest.approx(0.0)
    # The oracle: abs_rel, mean angle and EPE ~0 (-100 % each, i.e. +100 gain); miou 100 vs constant's.
    miou_ref = reference["semantic"]["value"]
    expected = (100 + 100 + 100 + (100 - miou_ref) / miou_ref * 100) / 4
    assert data["delta_m"]["oracle"]["delta_m"] == pytest.approx(expected, rel=1e-4)
    assert payload["delta_m"]["oracle"]["delta_m"] == data["delta_m"]["oracle"]["delta_m"]
    assert data["models"][0]["tasks"]["depth"]["num_images"] == 2
    assert data["models"][0]["config"]["depth_alignment"] == "least_squares"
    assert "torch" in data["versions"] and data["timestamp"]
    md = (tmp_path / "report.md").read_text()
    header = (
        "| model | depth abs_rel ↓ | normal mean_angular_error ↓ | semantic miou ↑ | optical_flow epe ↓ |"
    )
    assert header + " Δm % ↑ |" in md
    assert "| oracle |" in md and "Δm = (1/T)" in md and "### semantic" in md
    assert "per-image, per-axis non-negative scale" in md
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == [
        "delta_m.png", "grid_000_synthetic.png", "grid_001_street.png",
        "metrics_depth.png", "metrics_normal.png", "metrics_optical_flow.png", "metrics_semantic.png",
    ]  # fmt: skip
    with Image.open(tmp_path / "figures" / "grid_000_synthetic.png") as im:
        assert im.size[0] > im.size[1] > 100  # 3 columns (input, depth, normal) x 3 rows


def test_merge_round_trip_and_nan_as_null(tmp_path, evaluation):
    write_report(tmp_path / "a", [evaluation.reports["oracle"]])
    constant = copy.deepcopy(evaluation.reports["constant"])
    constant["tasks"]["depth"]["metrics"]["silog"] = math.nan  # e.g. a class absent from the data
    write_report(tmp_path / "b", [constant, evaluation.reports["oracle"]])
    text = (tmp_path / "b" / "metrics.json").read_text()
    assert "NaN" not in text  # strict JSON: absent classes are null
    merged = merge_reports([tmp_path / "a" / "metrics.json", tmp_path / "b" / "metrics.json"])
    assert [r["name"] for r in merged] == ["oracle", "constant", "oracle#2"]
    assert math.isnan(merged[1]["tasks"]["depth"]["metrics"]["silog"])
    assert merged[0]["tasks"]["depth"]["metrics"] == pytest.approx(
        evaluation.reports["oracle"]["tasks"]["depth"]["metrics"]
    )
    write_report(tmp_path / "merged", merged)  # no reference: no Δm column, no Δm chart
    assert "Δm" not in (tmp_path / "merged" / "report.md").read_text().split("## Settings")[0]
    assert not (tmp_path / "merged" / "figures" / "delta_m.png").exists()


def test_load_reports_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_reports(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"x": 1}')
    with pytest.raises(ValueError, match="not a stablemtl-eval"):
        load_reports(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="empty"):
        write_report(tmp_path / "out", [])
