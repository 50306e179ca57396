import pytest
import torch

from stablemtl.evaluation import OpticalFlowMetrics, SceneFlowMetrics, per_axis_nonnegative_scale


def _field(vectors):
    """(N, C) vectors -> a (1, C, 1, N) flow field."""
    return torch.tensor(vectors, dtype=torch.float64).T.unsqueeze(0).unsqueeze(2)


def _all_valid(n):
    return torch.ones(1, 1, n, dtype=torch.bool)


def test_per_axis_scale_is_nonnegative_least_squares():
    pred = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    gt = torch.tensor([[2.0, -1.0], [4.0, -1.0]])
    # u: <p,g>/<p,p> = 10/5 = 2; v: -2/2 = -1, clipped to 0.
    assert torch.allclose(per_axis_nonnegative_scale(pred, gt), torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_optical_flow_epe_and_fl_all_without_alignment():
    gt = _field([[3, 4], [1, 0], [0, 4], [100, 0], [50, 50]])
    pred = _field([[0, 0], [0, 0], [0, 0], [104, 0], [0, 0]])
    valid = _all_valid(5)
    valid[0, 0, 4] = False  # excluded pixel
    metric = OpticalFlowMetrics(alignment="none")
    metric.update(pred, gt, valid)
    out = metric.results()
    # EPEs 5, 1, 4, 4; outliers: 5 (>3 and >0.25) and 4 (>3 and >0.2); 4 vs |g| = 100 is within 5 %.
    assert out["epe"] == pytest.approx(14 / 4)
    assert out["fl_all"] == pytest.approx(50.0)


def test_optical_flow_alignment_fixes_per_axis_normalisation():
    gt = _field([[4, -1], [-8, 2], [2, 3]])
    pred = gt / torch.tensor([8.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)  # normalised per axis
    aligned, raw = OpticalFlowMetrics(), OpticalFlowMetrics(alignment="none")
    aligned.update(pred, gt, _all_valid(3))
    raw.update(pred, gt, _all_valid(3))
    assert aligned.results()["epe"] == pytest.approx(0.0, abs=1e-12)
    assert raw.results()["epe"] > 1.0


def test_unaligned_flow_is_rescaled_to_the_label_grid():
    # A (u, v) = (1, 2) px flow on a 1x1 grid is (2, 4) px on the 2x2 label grid.
    pred = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    gt = torch.tensor([2.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    metric = OpticalFlowMetrics(alignment="none")
    metric.update(pred, gt, torch.ones(1, 2, 2, dtype=torch.bool))
    assert metric.results()["epe"] == pytest.approx(0.0, abs=1e-12)


def test_epe_is_pooled_over_pixels_of_the_data_set():
    metric = OpticalFlowMetrics(alignment="none")
    metric.update(_field([[0, 0]]), _field([[6, 8]]), _all_valid(1))  # 1 px, EPE 10
    metric.update(_field([[0, 0]] * 3), _field([[0, 2]] * 3), _all_valid(3))  # 3 px, EPE 2
    assert metric.results()["epe"] == pytest.approx((10 + 3 * 2) / 4)


def test_scene_flow_or_rules_and_official_and_rules_by_hand():
    gt = _field([[1, 0, 0], [0.1, 0, 0], [10, 0, 0], [1, 0, 0]])
    pred = _field([[1.04, 0, 0], [0.14, 0, 0], [10.4, 0, 0], [1.5, 0, 0]])
    metric = SceneFlowMetrics(alignment="none", official_and=True)
    metric.update(pred, gt, _all_valid(4))
    out = metric.results()
    # EPE .04 .04 .4 .5; rel ~.04 ~.4 ~.04 ~.5.
    assert out["epe3d"] == pytest.approx((0.04 + 0.04 + 0.4 + 0.5) / 4)
    assert out["acc_strict"] == pytest.approx(75.0)  # pixels 1, 2 (EPE), 3 (rel)
    assert out["acc_relax"] == pytest.approx(75.0)
    assert out["outliers"] == pytest.approx(75.0)  # pixels 2 (rel), 3 (EPE), 4
    assert out["acc_strict_official_and"] == pytest.approx(25.0)
    assert out["acc_relax_official_and"] == pytest.approx(25.0)
    assert out["outliers_official_and"] == pytest.approx(25.0)
    assert "acc_strict_official_and" not in SceneFlowMetrics().metric_names()


def test_scene_flow_alignment_and_bad_mode():
    gt = _field([[0.5, -0.2, 2.0], [-1.0, 0.4, 1.0]])
    metric = SceneFlowMetrics()
    metric.update(gt / 2.0, gt, _all_valid(2))
    assert metric.results()["epe3d"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="alignment"):
        SceneFlowMetrics(alignment="scale_and_shift")
