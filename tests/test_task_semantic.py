import pytest
import torch

from stablemtl.tasks import IGNORE_INDEX, get_task
from stablemtl.tasks.semantic import CLASS_NAMES, PALETTE, SemanticTask


def all_ids() -> torch.Tensor:
    """Every class once plus two ignored pixels, (1, 2, 5)."""
    return torch.tensor([[[0, 1, 2, 3, 4], [5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]]])


def test_attributes():
    task = get_task("semantic")
    assert isinstance(task, SemanticTask)
    assert (task.prompt, task.label_channels, task.primary_metric, task.higher_is_better) == (
        "semantic",
        1,
        "miou",
        True,
    )
    assert task.num_classes == 8 and task.class_names[3] == "traffic light" and task.ignore_index == 255
    assert PALETTE[0] == (128, 64, 128) and PALETTE[7] == (0, 0, 142) and len(CLASS_NAMES) == 8
    assert task.is_discrete and task.prediction_dtype == task.label_dtype == torch.int64
    assert task.output_space.startswith("class ids (B,1,H,W) int64: 0 road, 1 building,")
    assert task.output_space.endswith("6 sky, 7 vehicle")


def test_baseline_is_the_majority_of_valid_labelled_pixels():
    task = SemanticTask()
    valid = torch.tensor([[True, False, True, True]])
    pairs = [(torch.tensor([[[3, 3, 5, 255]]]), valid), (torch.tensor([[[5, 5, 5, 1]]]), valid)]
    # valid ids: 3, 5 (255 ignored) and 5, 5, 1 (position 1 invalid) -> 5 wins 3 to 1
    baseline = task.baseline_prediction(iter(pairs))
    assert baseline.tolist() == [5] and baseline.dtype == torch.int64
    assert task.baseline_prediction().tolist() == [0]  # no labels: the first class


def test_encode_draws_palette_colours_and_black_for_ignore():
    image3, valid = SemanticTask().encode(all_ids(), torch.ones(2, 5, dtype=torch.bool))
    assert image3.shape == (3, 2, 5)
    torch.testing.assert_close(image3[:, 0, 0], torch.tensor([128, 64, 128]) / 255 * 2 - 1)
    torch.testing.assert_close(image3[:, 1, 1], torch.tensor([70, 130, 180]) / 255 * 2 - 1)
    assert image3[:, 1, 3].tolist() == [-1.0, -1.0, -1.0]
    assert valid.tolist() == [[True] * 5, [True, True, True, False, False]]


def test_ids_round_trip_exactly_and_invalid_pixels_are_black():
    ids = all_ids()
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 4] = False
    task = SemanticTask()
    image3, out_valid = task.encode(ids, valid)
    assert image3[:, 0, 4].tolist() == [-1.0, -1.0, -1.0] and not out_valid[0, 4]
    decoded = task.decode(image3)
    assert decoded.dtype == torch.int64 and decoded.shape == (1, 2, 5)
    assert torch.equal(decoded[out_valid[None]], ids[out_valid[None]])


def test_batched_random_ids_round_trip():
    ids = torch.randint(0, 8, (4, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    task = SemanticTask()
    image3, _ = task.encode(ids, torch.ones(4, 16, 16, dtype=torch.bool))
    assert torch.equal(task.decode(image3), ids)


def test_nearest_colour_survives_gaussian_noise():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8, (1, 1, 64, 64), generator=generator)
    task = SemanticTask()
    image3, _ = task.encode(ids, torch.ones(1, 64, 64, dtype=torch.bool))
    noisy = image3 + 0.1 * torch.randn(image3.shape, generator=generator)
    accuracy = (task.decode(noisy) == ids).float().mean().item()
    assert accuracy >= 0.99
    # and far more noise does break it, so the check above can fail
    very_noisy = image3 + 0.6 * torch.randn(image3.shape, generator=generator)
    assert (task.decode(very_noisy) == ids).float().mean().item() < 0.9


def test_float_labels_with_nan_are_accepted_and_bad_ids_raise():
    task = SemanticTask()
    label = torch.tensor([[[1.0, torch.nan]]])
    image3, valid = task.encode(label, torch.ones(1, 2, dtype=torch.bool))
    assert valid.tolist() == [[True, False]] and image3[:, 0, 1].tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="whole"):
        task.encode(torch.tensor([[[1.5]]]), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[9, 250\]"):
        task.encode(torch.tensor([[[9, 250, 3]]]), torch.ones(1, 3, dtype=torch.bool))
    # a bad id under an invalid pixel is not looked at
    image3, valid = task.encode(torch.tensor([[[9, 3]]]), torch.tensor([[False, True]]))
    assert valid.tolist() == [[False, True]]


def test_constructor_validates_the_palette():
    with pytest.raises(ValueError, match="black"):
        SemanticTask(palette=((0, 0, 0), (1, 2, 3)), class_names=("a", "b"))
    with pytest.raises(ValueError, match="distinct"):
        SemanticTask(palette=((1, 2, 3), (1, 2, 3)), class_names=("a", "b"))
    with pytest.raises(ValueError, match="class_names"):
        SemanticTask(palette=((1, 2, 3),), class_names=("a", "b"))
    with pytest.raises(ValueError, match="ignore_index"):
        SemanticTask(ignore_index=3)
    two = SemanticTask(palette=((255, 0, 0), (0, 0, 255)), class_names=("red", "blue"))
    image3, _ = two.encode(torch.tensor([[[0, 1]]]), torch.ones(1, 2, dtype=torch.bool))
    assert image3[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert two.decode(image3).tolist() == [[[0, 1]]]


def test_visualize_draws_the_palette():
    image = SemanticTask().visualize(all_ids())
    assert image.mode == "RGB" and image.size == (5, 2)
    assert image.getpixel((0, 0)) == PALETTE[0] and image.getpixel((2, 1)) == PALETTE[7]
    assert image.getpixel((3, 1)) == (0, 0, 0)
    assert SemanticTask().visualize(all_ids()[0]).size == (5, 2)
