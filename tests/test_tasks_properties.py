"""Property tests over every registered task: random labels with NaN / inf, random masks, all-invalid
images, and the task's declared facts (prediction channels and dtype, baseline, output space).

Parametrised over ``task_names()``, so a task registered on import of ``stablemtl.tasks`` is covered
without editing this file; ``check_task_properties`` runs the same checks on any task object.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stablemtl.tasks import Task, get_task, task_names

CHECKS = settings(max_examples=40, deadline=None, derandomize=True)

any_float = st.floats(width=32, allow_nan=True, allow_infinity=True)


def label_values(task: Task):
    """Random label entries: class ids (with the ignore id, NaN, inf) for discrete tasks, any float else."""
    if task.is_discrete:
        ids = st.sampled_from([*range(len(task.class_names)), task.ignore_index]).map(float)
        return ids | st.sampled_from([np.nan, np.inf])
    return any_float


@st.composite
def labelled(draw, task: Task, channels: int | None = None):
    """A random (label, valid) pair for ``task`` (``channels`` defaults to its label channels), batched
    or not."""
    batch = draw(st.sampled_from([None, 1, 3]))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    lead = () if batch is None else (batch,)
    shape = (*lead, channels or task.label_channels, h, w)
    label = draw(hnp.arrays(np.float32, shape, elements=label_values(task)))
    valid = draw(hnp.arrays(np.bool_, (*lead, h, w)))
    return torch.from_numpy(label), torch.from_numpy(valid)


def check_outputs(task: Task, label: torch.Tensor, valid: torch.Tensor):
    """encode -> decode of one (label, valid) pair keeps every contract of ``stablemtl.tasks.base``."""
    image3, out_valid = task.encode(label, valid)
    assert image3.shape == (*label.shape[:-3], 3, *label.shape[-2:]) and image3.dtype == torch.float32
    assert torch.isfinite(image3).all()
    assert image3.min() >= -1.0 and image3.max() <= 1.0
    assert out_valid.shape == valid.shape and out_valid.dtype == torch.bool
    assert not (out_valid & ~valid).any()  # encoding never adds valid pixels
    assert not (out_valid & ~torch.isfinite(label).all(dim=-3)).any()  # non-finite pixels are invalid
    prediction = task.decode(image3)
    assert prediction.shape == (*label.shape[:-3], task.prediction_channels, *label.shape[-2:])
    assert prediction.dtype == task.prediction_dtype
    if task.is_discrete:
        assert prediction.min() >= 0 and prediction.max() < len(task.class_names)
    else:
        assert torch.isfinite(prediction).all()
    return image3, out_valid


def check_random_labels(task: Task, channels: int | None = None) -> None:
    @CHECKS
    @given(labelled(task, channels))
    def check(pair):
        check_outputs(task, *pair)

    check()


def check_all_invalid(task: Task, fill: float) -> None:
    label = torch.full((2, task.label_channels, 8, 8), fill, dtype=torch.float32)
    _, out_valid = check_outputs(task, label, torch.ones(2, 8, 8, dtype=torch.bool))
    assert not out_valid.any()
    assert not task.latent_valid_mask(out_valid).any()
    # a finite label under an all-False mask is all-invalid too
    finite = torch.zeros(1, task.label_channels, 8, 8)
    _, out_valid = check_outputs(task, finite, torch.zeros(1, 8, 8, dtype=torch.bool))
    assert not out_valid.any()


def random_label(task: Task, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A finite label of ``shape`` (B, C, H, W): class ids of ``task.label_dtype``, or floats in [0, 2)."""
    if task.is_discrete:
        return torch.randint(0, len(task.class_names), shape, generator=generator).to(task.label_dtype)
    return torch.rand(*shape, generator=generator) * 2


def check_batch_equals_one_by_one(task: Task) -> None:
    generator = torch.Generator().manual_seed(3)
    label = random_label(task, (3, task.label_channels, 8, 8), generator)
    valid = torch.rand(3, 8, 8, generator=generator) > 0.2
    image3, out_valid = task.encode(label, valid)
    prediction = task.decode(image3)
    for i in range(3):
        single_image3, single_valid = task.encode(label[i], valid[i])
        torch.testing.assert_close(image3[i], single_image3)
        assert torch.equal(out_valid[i], single_valid)
        torch.testing.assert_close(prediction[i], task.decode(single_image3))
        assert task.visualize(prediction[i]).size == (8, 8)


def check_facts(task: Task) -> None:
    """The declared facts agree with what the task does: the baseline has the prediction format, the
    card line names the prediction's channels, class names exist exactly for discrete tasks."""
    assert task.output_space and f"(B,{task.prediction_channels},H,W)" in task.output_space
    assert bool(task.class_names) == task.is_discrete
    if task.baseline_constant is not None:
        baseline = task.baseline_prediction()
        assert baseline.shape == (task.prediction_channels,) and baseline.dtype == task.prediction_dtype
        # The baseline is a prediction the task could make: it survives visualisation.
        assert task.visualize(baseline.view(-1, 1, 1).expand(-1, 4, 5)).size == (5, 4)


def check_task_properties(task: Task) -> None:
    """Every check of this file on one task object (for tasks registered inside a test)."""
    check_random_labels(task)
    for fill in (np.nan, np.inf, -np.inf):
        check_all_invalid(task, fill)
    check_batch_equals_one_by_one(task)
    check_facts(task)


@pytest.mark.parametrize("name", task_names())
def test_random_labels_give_finite_images_in_range(name):
    check_random_labels(get_task(name))


def test_random_rgb_shading_labels_give_finite_images_in_range():
    # Shading also accepts RGB labels (reduced to luminance), beside its one-channel grey labels.
    check_random_labels(get_task("shading"), channels=3)


@pytest.mark.parametrize("name", task_names())
@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_all_invalid_labels_give_an_all_invalid_mask(name, fill):
    check_all_invalid(get_task(name), fill)


@pytest.mark.parametrize("name", task_names())
def test_batch_equals_images_one_by_one(name):
    check_batch_equals_one_by_one(get_task(name))


@pytest.mark.parametrize("name", task_names())
def test_declared_facts_match_the_task(name):
    check_facts(get_task(name))
