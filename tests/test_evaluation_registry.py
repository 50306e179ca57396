"""The evaluator builds each task's accumulator from the family the task names and the task's facts."""

import pytest
import torch

from stablemtl.evaluation import (
    DepthMetrics,
    EvalConfig,
    IntrinsicImageMetrics,
    SemanticMetrics,
    TaskMetricsAverager,
    build_metric,
    metric_families,
    register_metric_family,
)
from stablemtl.evaluation import registry as metric_registry
from stablemtl.tasks import get_task, register_task, task_names, unregister_task
from stablemtl.tasks.depth import DepthTask
from stablemtl.tasks.semantic import SemanticTask


class LidarDepthTask(DepthTask):
    """A second depth task: scored like depth because it names the family, not because of its name."""

    name = "lidar_depth"
    prompt = "lidar depth"


class TwoClassTask(SemanticTask):
    name = "two_class"
    prompt = "two class"


@pytest.fixture
def extra_tasks():
    tasks = [
        register_task(LidarDepthTask()),
        register_task(TwoClassTask(palette=((255, 0, 0), (0, 0, 255)), class_names=("sea", "land"))),
    ]
    yield tasks
    for task in tasks:
        unregister_task(task.name)


def test_every_registered_task_gets_an_accumulator_of_its_family():
    for name in task_names():
        metric = build_metric(name)
        task = get_task(name)
        assert (task.metric_family is None) == isinstance(metric, TaskMetricsAverager), name
        assert task.metric_family is None or task.metric_family in metric_families()
    assert build_metric("albedo").label_channels == 3 and build_metric("shading").label_channels == 1
    config = EvalConfig(depth_alignment="none", max_depth=80.0)
    assert build_metric("depth", config).config()["alignment"] == "none"


def test_a_new_task_reuses_a_family_with_its_own_facts(extra_tasks):
    assert isinstance(build_metric("lidar_depth"), DepthMetrics)
    metric = build_metric("two_class")
    assert isinstance(metric, SemanticMetrics)
    assert metric.metric_names() == ["miou", "pixel_accuracy", "iou_sea", "iou_land"]
    ids = torch.tensor([[[[0, 1, 1, 255]]]])
    metric.update(ids, ids, torch.ones(1, 1, 4, dtype=torch.bool))
    assert metric.results()["miou"] == pytest.approx(100.0)


def test_unknown_families_raise_and_new_families_register(extra_tasks, monkeypatch):
    monkeypatch.setattr(LidarDepthTask, "metric_family", "lidar")
    with pytest.raises(ValueError, match="metric family 'lidar'; known: depth"):
        build_metric("lidar_depth")
    monkeypatch.setattr(metric_registry, "_FAMILIES", dict(metric_registry._FAMILIES))  # undone after
    register_metric_family("lidar", lambda task, c: IntrinsicImageMetrics(task.label_channels))
    assert metric_families()[-1] == "lidar"
    assert isinstance(build_metric("lidar_depth"), IntrinsicImageMetrics)
    with pytest.raises(ValueError, match="already registered"):
        register_metric_family("depth", lambda task, c: None)
