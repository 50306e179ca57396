"""Partial-label protocols on any source: one label or a random subset per image, drawn once."""

from __future__ import annotations

import numpy as np
import pytest

from stablemtl.data import load_source, make_dataset
from stablemtl.data.label_protocols import LabelProtocolSource, apply_label_protocol, draw_labels


def test_one_label_keeps_one_labelled_task_per_image_balanced_within_what_each_image_has():
    labelled = np.ones((90, 3), dtype=bool)
    labelled[:30, 2] = False  # a third of the images cannot give task 2
    keep = draw_labels(labelled, "one-label", seed=4)
    assert (keep.sum(1) == 1).all() and not (keep & ~labelled).any()
    assert keep.sum(0).tolist() == [30, 30, 30]  # still balanced
    assert np.array_equal(keep, draw_labels(labelled, "one-label", seed=4))


def test_random_labels_keep_a_proper_subset_of_each_images_labels():
    labelled = np.random.default_rng(0).random((200, 5)) < 0.6
    keep = draw_labels(labelled, "random-labels", seed=1)
    n = labelled.sum(1)
    assert not (keep & ~labelled).any()
    assert ((keep.sum(1) >= 1) | (n == 0)).all()
    assert (keep.sum(1)[n >= 2] < n[n >= 2]).all()  # never everything an image has, when it has several
    assert np.array_equal(draw_labels(labelled, "full", seed=1), labelled)


def test_a_synthetic_source_under_one_label_hides_the_other_labels(tmp_path):
    source = load_source(make_dataset("street", 10, tmp_path / "street", size=16, seed=0))
    wrapped = LabelProtocolSource(source, "one-label", seed=2)
    per_task = {t: wrapped.rows_with_task(t) for t in source.tasks}
    assert sum(len(rows) for rows in per_task.values()) == len(source)  # one task per image
    for task, rows in per_task.items():
        for index in rows:
            assert list(wrapped[index]["labels"]) == [task] == list(wrapped.raw(index)["valid"])
            assert list(wrapped.item(index, task)["labels"]) == [task]
    other = next(t for t in source.tasks if 0 not in per_task[t])
    with pytest.raises(ValueError, match="does not keep"):
        wrapped.item(0, other)
    assert apply_label_protocol([source], "full", 0) == [source]


def test_training_data_under_a_protocol_draws_each_image_only_for_its_kept_task(tmp_path):
    from stablemtl.training import load_config
    from stablemtl.training.data import build_training_data

    data = make_dataset("street", 8, tmp_path / "street", size=16, seed=0)
    config = load_config(
        None,
        train_data=[str(data)],
        label_protocol="one-label",
        train_batch_size=1,
        tasks=["depth", "normal"],
    )
    sampler, _, sources = build_training_data(config)
    (source,) = sources
    kept = {t: set(source.rows_with_task(t)) for t in ("depth", "normal")}
    assert not kept["depth"] & kept["normal"] and len(kept["depth"] | kept["normal"]) == 8
    for keys, _ in zip(sampler, range(12)):  # the sampler is endless
        for task, _, index, _ in keys:
            assert index in kept[task]
