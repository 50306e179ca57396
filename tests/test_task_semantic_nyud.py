"""The 13-class NYUD-v2 semantic task: its facts, palette spacing, exact round trip and the evaluator's
13-class scoring."""

import itertools
import math

import pytest
import torch

from stablemtl.evaluation import SemanticMetrics, build_metric
from stablemtl.tasks import IGNORE_INDEX, PAPER_TASKS, get_task, task_names
from stablemtl.tasks.semantic import SemanticTask
from stablemtl.tasks.semantic_nyud import CLASS_NAMES, PALETTE, NyudSemanticTask


def test_attributes_and_registration_after_the_paper_tasks():
    task = get_task("semantic_nyud")
    assert isinstance(task, NyudSemanticTask) and isinstance(task, SemanticTask)
    assert task_names() == [*PAPER_TASKS, "semantic_nyud"]
    assert task.prompt == "indoor semantic segmentation" and task.metric_family == "semantic"
    assert task.num_classes == 13 and task.ignore_index == IGNORE_INDEX == 255
    assert task.class_names == CLASS_NAMES and CLASS_NAMES[0] == "bed" and CLASS_NAMES[-1] == "window"
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES)  # the 13-class set's ids follow the names' order
    assert task.output_space.startswith("class ids (B,1,H,W) int64: 0 bed, 1 books, 2 ceiling,")
    assert task.output_space.endswith("10 tv, 11 wall, 12 window")
    assert (task.primary_metric, task.higher_is_better, task.is_discrete) == ("miou", True, True)
    assert repr(task) == "NyudSemanticTask(name='semantic_nyud')"
    assert get_task("semantic").num_classes == 8  # the Cityscapes task is unchanged


def test_palette_colours_are_far_apart_and_far_from_black():
    assert len(set(PALETTE)) == 13 and all(0 <= c <= 255 for colour in PALETTE for c in colour)
    nearest = min(math.dist(a, b) for a, b in itertools.combinations(PALETTE, 2))
    assert nearest > 179  # the 14-point cube packing: 127 * sqrt(2) = 179.6
    assert min(math.dist(colour, (0, 0, 0)) for colour in PALETTE) > 181  # black marks ignored pixels
    cityscapes = min(math.dist(a, b) for a, b in itertools.combinations(get_task("semantic").palette, 2))
    assert nearest > 2 * cityscapes


def test_every_class_round_trips_exactly_and_unknown_ids_raise():
    task = get_task("semantic_nyud")
    ids = torch.tensor([[[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, IGNORE_INDEX]]])
    image3, valid = task.encode(ids, torch.ones(2, 7, dtype=torch.bool))
    assert valid.sum() == 13 and image3[:, 1, 6].tolist() == [-1.0, -1.0, -1.0]
    torch.testing.assert_close(image3[:, 1, 5], torch.tensor([128, 128, 255]) / 255 * 2 - 1)
    assert torch.equal(task.decode(image3)[valid[None]], ids[valid[None]])
    batch = torch.randint(0, 13, (3, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(task.decode(task.encode(batch, torch.ones(3, 16, 16, dtype=torch.bool))[0]), batch)
    with pytest.raises(ValueError, match=r"\[13\] outside 0\.\.12"):
        task.encode(torch.tensor([[[13]]]), torch.ones(1, 1, dtype=torch.bool))


def test_nearest_colour_survives_more_noise_than_the_cityscapes_palette():
    def accuracy(task, sigma):
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, task.num_classes, (1, 1, 64, 64), generator=generator)
        image3, _ = task.encode(ids, torch.ones(1, 64, 64, dtype=torch.bool))
        noisy = image3 + sigma * torch.randn(image3.shape, generator=generator)
        return (task.decode(noisy) == ids).float().mean().item()

    nyud, cityscapes = get_task("semantic_nyud"), get_task("semantic")
    assert accuracy(nyud, 0.2) >= 0.99
    assert accuracy(nyud, 0.3) > accuracy(cityscapes, 0.3) + 0.1
    assert accuracy(nyud, 0.8) < 0.8  # far more noise breaks it, so the checks above can fail


def test_evaluator_scores_miou_over_the_13_class_names():
    metric = build_metric("semantic_nyud")
    assert isinstance(metric, SemanticMetrics)
    assert metric.metric_names() == ["miou", "pixel_accuracy", *[f"iou_{name}" for name in CLASS_NAMES]]
    label = torch.tensor([[[[0, 12], [12, IGNORE_INDEX]]]])
    metric.update(torch.tensor([[[[0, 12], [4, 4]]]]), label, torch.ones(1, 2, 2, dtype=torch.bool))
    out = metric.results()
    # bed 1/1; window: 1 hit of 2 labelled; floor predicted once, never labelled -> IoU 0.
    assert out["iou_bed"] == pytest.approx(100.0) and out["iou_window"] == pytest.approx(50.0)
    assert out["iou_floor"] == pytest.approx(0.0) and math.isnan(out["iou_wall"])
    assert out["miou"] == pytest.approx(50.0) and out["pixel_accuracy"] == pytest.approx(200.0 / 3)


def test_hitt_has_a_default_head_for_it():
    from stablemtl.training.hitt_targets import head_specs

    (spec,) = head_specs(["semantic_nyud"])
    assert (spec["name"], spec["kind"], spec["num_bins"], spec["tau"]) == (
        "semantic_nyud",
        "classification",
        13,
        0.9,
    )
