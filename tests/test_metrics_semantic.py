import numpy as np
import pytest
import torch

from stablemtl.evaluation import SemanticMetrics
from stablemtl.tasks import get_task


def _ids(rows):
    return torch.tensor(rows, dtype=torch.long).unsqueeze(0).unsqueeze(0)


def test_confusion_matrix_metrics_by_hand():
    metric = SemanticMetrics(get_task("semantic").class_names)
    label = _ids([[0, 0, 1], [1, 2, 255]])
    pred = _ids([[0, 1, 1], [1, 1, 0]])
    metric.update(pred, label, torch.ones(1, 2, 3, dtype=torch.bool))
    out = metric.results()
    # TP = (1, 2, 0); FP = (0, 2, 0); FN = (1, 0, 1) -> IoU 1/2, 2/4, 0; classes 3..7 absent (NaN).
    assert out["iou_road"] == pytest.approx(50.0)
    assert out["iou_building"] == pytest.approx(50.0)
    assert out["iou_pole"] == pytest.approx(0.0)
    assert np.isnan(out["iou_sky"])
    assert out["miou"] == pytest.approx(100.0 / 3)
    assert out["pixel_accuracy"] == pytest.approx(60.0)


def test_confusion_is_accumulated_over_the_data_set_and_scores_are_argmaxed():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 8, (1, 1, 4, 5)) for _ in range(3)]
    preds = [rng.integers(0, 8, (1, 1, 4, 5)) for _ in range(3)]
    metric = SemanticMetrics(get_task("semantic").class_names)
    for label, pred in zip(labels, preds):
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred[:, 0]), 8).permute(0, 3, 1, 2).float()
        metric.update(scores, torch.from_numpy(label), torch.ones(1, 4, 5, dtype=torch.bool))
    conf = np.zeros((8, 8))
    for label, pred in zip(labels, preds):
        np.add.at(conf, (label.ravel(), pred.ravel()), 1)
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert metric.results()["miou"] == pytest.approx(100 * np.nanmean(iou))
    assert torch.equal(metric.confusion, torch.from_numpy(conf).long())


def test_prediction_is_resized_nearest_and_bad_ids_raise():
    metric = SemanticMetrics(get_task("semantic").class_names)
    pred = _ids([[3]])  # 1x1 -> 2x2 by nearest: stays a whole class id
    metric.update(pred, _ids([[3, 3], [3, 4]]), torch.ones(1, 2, 2, dtype=torch.bool))
    assert metric.results()["pixel_accuracy"] == pytest.approx(75.0)
    with pytest.raises(ValueError, match="prediction ids"):
        metric.update(_ids([[9]]), _ids([[1]]), torch.ones(1, 1, 1, dtype=torch.bool))


def test_ignore_index_comes_from_the_caller():
    metric = SemanticMetrics(("a", "b"), ignore_index=7)
    metric.update(_ids([[0, 1, 1]]), _ids([[0, 7, 1]]), torch.ones(1, 1, 3, dtype=torch.bool))
    out = metric.results()
    assert out["pixel_accuracy"] == pytest.approx(100.0) and metric.config()["ignore_index"] == 7
    assert metric.metric_names() == ["miou", "pixel_accuracy", "iou_a", "iou_b"]
