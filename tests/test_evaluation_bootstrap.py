"""Paired bootstrap intervals: exact resampled metrics for every pooling, shared resamples, Δm verdicts."""

from __future__ import annotations

import pytest
import torch
from evaluation_fixtures import make_sample

from stablemtl.evaluation import build_reference, evaluate_models, write_report
from stablemtl.evaluation.bootstrap import (
    bootstrap_metric,
    contribution,
    interval,
    resample_counts,
    snapshot,
    verdict,
)
from stablemtl.evaluation.config import EvalConfig
from stablemtl.evaluation.oracle import LabelOracle
from stablemtl.evaluation.registry import build_metric
from stablemtl.evaluation.trivial import ConstantPredictor


def _records(task: str, items, config: EvalConfig | None = None) -> list:
    metric, records = build_metric(task, config or EvalConfig()), []
    for index, (pred, label, valid) in enumerate(items):
        before = snapshot(metric)
        metric.update(pred[None], label[None], valid[None])
        records.append((index, contribution(metric, before)))
    return records


def test_resamples_depend_only_on_size_count_and_seed():
    counts = resample_counts(5, 200, seed=3)
    assert counts.shape == (200, 5) and bool((counts.sum(1) == 5).all())
    assert torch.equal(counts, resample_counts(5, 200, seed=3))
    assert not torch.equal(counts, resample_counts(5, 200, seed=4))
    with pytest.raises(ValueError, match="num_samples"):
        resample_counts(0, 10, seed=0)


def test_a_per_image_mean_is_the_count_weighted_mean_of_the_drawn_images():
    # alignment none: image k predicts (1 + k/2) x the truth, so its AbsRel is exactly k/2.
    label = torch.full((1, 2, 2), 2.0)
    items = [(label * (1 + k / 2), label, torch.ones(2, 2, dtype=torch.bool)) for k in range(3)]
    unaligned = EvalConfig(depth_alignment="none")
    records = _records("depth", items, unaligned)
    counts = resample_counts(3, 50, seed=0)
    fresh = build_metric("depth", unaligned)
    values = bootstrap_metric(fresh, records, counts, "abs_rel")
    expected = (counts.double() @ torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)) / 3
    assert values == pytest.approx(expected.tolist())


def test_miou_is_recomputed_from_the_resampled_images_confusion_matrices():
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        label = torch.randint(0, 4, (1, 6, 6), generator=g)
        pred = torch.where(
            torch.rand(1, 6, 6, generator=g) < 0.7, label, torch.randint(0, 4, (1, 6, 6), generator=g)
        )
        items.append((pred, label, torch.ones(6, 6, dtype=torch.bool)))
    counts = resample_counts(4, 20, seed=1)
    values = bootstrap_metric(
        build_metric("semantic", EvalConfig()), _records("semantic", items), counts, "miou"
    )
    for b in (0, 7, 19):  # the same as scoring the resampled data set image by image
        direct = build_metric("semantic", EvalConfig())
        for index, count in enumerate(counts[b].tolist()):
            for _ in range(count):
                direct.update(items[index][0][None], items[index][1][None], items[index][2][None])
        assert values[b] == pytest.approx(direct.results()["miou"])
    # Not the mean of per-image mIoUs: the pooled confusion matrix is what mIoU resamples.
    assert len(set(values)) > 1


def test_interval_and_verdict():
    assert interval(list(range(101))) == pytest.approx([2.5, 97.5])
    assert interval([float("nan")]) is None
    assert verdict(0.1, 2.0).startswith("better") and verdict(-3.0, -0.3).startswith("worse")
    assert verdict(-1.0, 1.0).startswith("within noise")


def test_paired_delta_m_intervals_across_separate_evaluations(tmp_path):
    samples = [make_sample(seed, tasks=("depth", "normal")) for seed in range(6)]
    constant = ConstantPredictor()
    run = {"progress": False, "bootstrap_resamples": 200}
    reference_report = evaluate_models({"constant ref": constant}, samples, **run).reports
    models = {"constant": constant, "encoding": LabelOracle()}
    reports = evaluate_models(models, samples, **run).reports
    reference = build_reference(list(reference_report.values()))
    payload = write_report(tmp_path, reports, reference)
    # The same predictor in two runs: identical resamples, so every resampled Δm is exactly 0.
    assert payload["delta_m"]["constant"]["interval"] == pytest.approx([0.0, 0.0])
    assert payload["delta_m"]["constant"]["verdict"].startswith("within noise")
    # The label oracle beats the constant on every image: its whole interval is above 0.
    low, high = payload["delta_m"]["encoding"]["interval"]
    assert 0 < low <= payload["delta_m"]["encoding"]["delta_m"] <= high
    text = (tmp_path / "report.md").read_text()
    assert "encoding vs reference: Δm +" in text and "better, outside noise" in text
    depth = reports["constant"]["tasks"]["depth"]
    lo, hi = depth["bootstrap"]["interval"]
    assert lo < depth["metrics"]["abs_rel"] < hi and len(depth["bootstrap"]["values"]) == 200
    # Other data (one sample fewer) is not paired: no interval rather than a wrong one.
    fewer = evaluate_models({"constant": constant}, samples[:5], **run).reports
    assert "interval" not in write_report(tmp_path / "x", fewer, reference)["delta_m"]["constant"]
    other = evaluate_models({"constant": constant}, samples, progress=False, bootstrap_resamples=100).reports
    assert "interval" not in write_report(tmp_path / "y", other, reference)["delta_m"]["constant"]


def test_delta_m_difference_between_two_models_is_paired(tmp_path):
    samples = [make_sample(seed, tasks=("depth", "normal")) for seed in range(8)]
    constant = ConstantPredictor()
    run = {"progress": False, "bootstrap_resamples": 200}
    tilted = ConstantPredictor({"normal": [0.0, 0.6, 0.8]})  # another constant normal than the models'
    reference = build_reference(list(evaluate_models({"tilted": tilted}, samples, **run).reports.values()))
    models = {"constant": constant, "constant again": ConstantPredictor(), "encoding": LabelOracle()}
    reports = evaluate_models(models, samples, **run).reports
    pairs = [("encoding", "constant"), ("constant", "constant again")]
    payload = write_report(tmp_path, reports, reference, comparisons=pairs)
    better, same = payload["comparisons"]
    delta = payload["delta_m"]
    assert better["models"] == ["encoding", "constant"] and better["tasks"] == ["depth", "normal"]
    assert better["difference"] == pytest.approx(delta["encoding"]["delta_m"] - delta["constant"]["delta_m"])
    assert 0 < better["interval"][0] <= better["difference"] <= better["interval"][1]
    assert better["verdict"] == "better, outside noise"
    # Two models that predict the same differ by 0 on every resample, although each Δm has an interval.
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0]
    assert same["verdict"].startswith("within noise")
    low, high = delta["constant again"]["interval"]
    assert high - low > 0
    text = (tmp_path / "report.md").read_text()
    assert f"- encoding − constant: {better['difference']:+.2f} Δm points [" in text
    # Scored on other data than the reference: a difference, but no interval rather than a wrong one.
    fewer = evaluate_models(models, samples[:7], **run).reports
    unpaired = write_report(tmp_path / "x", fewer, reference, comparisons=pairs[:1])["comparisons"][0]
    assert unpaired["difference"] is not None and "interval" not in unpaired
    with pytest.raises(ValueError, match=r"\['nobody'\]"):
        write_report(tmp_path / "y", reports, reference, comparisons=[("encoding", "nobody")])
    with pytest.raises(ValueError, match="needs a reference"):
        write_report(tmp_path / "z", reports, None, comparisons=pairs)
