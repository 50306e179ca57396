"""NYUD-v2 (MTL layout) reader and its one-label / random-labels protocols."""

import numpy as np
import pytest
import torch

from stablemtl.data import load_source
from stablemtl.data.label_protocols import draw_labels
from stablemtl.evaluation import evaluate
from stablemtl.evaluation.oracle import LabelOracle
from stablemtl.tasks import IGNORE_INDEX, get_task

H, W, N = 4, 6, 9


@pytest.fixture
def nyud(tmp_path):
    root = tmp_path / "nyuv2"
    for kind in ("image", "label", "depth", "normal"):
        (root / "train" / kind).mkdir(parents=True)
    for i in range(N):
        np.save(root / f"train/image/{i}.npy", np.full((H, W, 3), i / 10, np.float32))
        # Every one of the 13 classes: pixel k holds class k % 13 (pixel 0 unlabelled).
        label = (np.arange(H * W) % 13).reshape(H, W).astype(np.float32)
        label[0, 0] = -1.0
        np.save(root / f"train/label/{i}.npy", label)
        depth = np.full((H, W, 1), 2.0 + i, np.float32)
        depth[1, 1] = 0.0
        np.save(root / f"train/depth/{i}.npy", depth)
        normal = np.zeros((H, W, 3), np.float32)
        normal[..., 1] = 1.0
        normal[2, 2] = 0.0
        np.save(root / f"train/normal/{i}.npy", normal)
    return root


def test_full_labels_decode_ids_depth_and_normals(nyud):
    reader = load_source({"reader": "nyud", "root": nyud, "resolution": None})
    assert len(reader) == N
    sample = reader[3]
    assert sample["image"][0, 0, 0].item() == pytest.approx(0.3)
    assert "semantic" not in sample["labels"]  # the 13 NYUD classes are not the 8 Cityscapes ones
    ids = sample["labels"]["semantic_nyud"][0]
    assert ids.dtype == torch.int64 and ids[1, 1] == 7 and ids[2, 0] == 12
    assert ids[0, 0] == IGNORE_INDEX and not sample["valid"]["semantic_nyud"][0, 0]
    assert (
        sample["labels"]["depth"][0, 0, 0].item() == pytest.approx(5.0) and not sample["valid"]["depth"][1, 1]
    )
    torch.testing.assert_close(sample["labels"]["normal"][:, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert not sample["valid"]["normal"][2, 2]


def test_one_label_keeps_exactly_one_task_per_image_balanced_and_fixed(nyud):
    spec = {"reader": "nyud", "root": nyud, "protocol": "one-label", "label_seed": 3}
    reader = load_source(spec)
    counts = {t: len(reader.rows_with_task(t)) for t in ("semantic_nyud", "depth", "normal")}
    assert counts == {"semantic_nyud": 3, "depth": 3, "normal": 3}
    for index in range(N):
        sample = reader[index]
        assert len(sample["labels"]) == 1 and list(sample["labels"]) == reader.tasks_of(index)
    assert [load_source(spec).tasks_of(i) for i in range(N)] == [reader.tasks_of(i) for i in range(N)]
    # A training draw for a task reads that label only, on an image that has it.
    first_depth = reader.rows_with_task("depth")[0]
    assert list(reader.item(first_depth, "depth")["labels"]) == ["depth"]


def test_random_labels_keep_one_or_two_tasks():
    everything = np.ones((795, 3), dtype=bool)
    keep = draw_labels(everything, "random-labels", seed=0)
    assert set(keep.sum(1).tolist()) == {1, 2}
    assert 350 < keep.sum(1).tolist().count(1) < 450  # k ~ U{1, 2}
    assert not np.array_equal(keep, draw_labels(everything, "random-labels", seed=1))
    one = draw_labels(everything, "one-label", seed=0)
    assert one.sum(0).tolist() == [265, 265, 265] and (one.sum(1) == 1).all()
    with pytest.raises(ValueError, match="protocol"):
        draw_labels(everything[:5], "half-labels", seed=0)


def test_label_files_npy_and_mtl_psl_pth(nyud, tmp_path):
    weights = np.zeros((N, 3), np.float32)
    weights[:, 1] = 1  # depth only
    weights[0] = (1, 0, 1)
    np.save(tmp_path / "labels.npy", weights)
    reader = load_source({"reader": "nyud", "root": nyud, "label_file": tmp_path / "labels.npy"})
    assert reader.tasks_of(0) == ["semantic_nyud", "normal"] and reader.tasks_of(1) == ["depth"]
    torch.save({"labels_weights": torch.from_numpy(weights)}, tmp_path / "onelabel.pth")
    reader = load_source({"reader": "nyud", "root": nyud, "label_file": tmp_path / "onelabel.pth"})
    assert reader.rows_with_task("semantic_nyud") == [0]
    np.save(tmp_path / "short.npy", weights[:3])
    with pytest.raises(ValueError, match=r"expected an \(9, 3\)"):
        load_source({"reader": "nyud", "root": nyud, "label_file": tmp_path / "short.npy"})


def test_an_image_of_unexpected_encoding_is_an_error(nyud):
    np.save(nyud / "train/image/0.npy", np.full((H, W, 3), 200.0, np.float32))
    with pytest.raises(ValueError, match="uint8 or floats in"):
        load_source({"reader": "nyud", "root": nyud})[0]


def test_semantic_labels_round_trip_through_the_13_class_task_and_are_scored(nyud):
    sample = load_source({"reader": "nyud", "root": nyud, "resolution": None})[4]
    label, valid = sample["labels"]["semantic_nyud"], sample["valid"]["semantic_nyud"]
    assert set(label[0][valid].tolist()) == set(range(13)) and int(valid.sum()) == H * W - 1
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):  # the reason for a task of its own
        get_task("semantic").encode(label, valid)
    task = get_task("semantic_nyud")
    image3, encoded_valid = task.encode(label, valid)
    assert torch.equal(encoded_valid, valid) and image3[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert torch.equal(task.decode(image3)[0][valid], label[0][valid])

    # The evaluator scores it with the 13 class names: the encoding oracle is perfect ...
    report = evaluate(LabelOracle(), [sample], tasks=["semantic_nyud"], progress=False)
    metrics = report["tasks"]["semantic_nyud"]["metrics"]
    assert metrics["miou"] == pytest.approx(100.0) and metrics["pixel_accuracy"] == pytest.approx(100.0)
    assert metrics["iou_bed"] == pytest.approx(100.0) and metrics["iou_window"] == pytest.approx(100.0)

    # ... and a constant "wall" (id 11) hits the 1 wall pixel of 23 valid ones: IoU 1/23, 0 elsewhere.
    class Wall:
        def predict(self, images, next_images, tasks):
            return {"semantic_nyud": torch.full((images.shape[0], 1, H, W), 11, dtype=torch.int64)}

    metrics = evaluate(Wall(), [sample], tasks=["semantic_nyud"], progress=False)["tasks"]["semantic_nyud"]
    assert metrics["metrics"]["iou_wall"] == pytest.approx(100.0 / 23)
    assert metrics["metrics"]["miou"] == pytest.approx(100.0 / 23 / 13)
    assert metrics["metrics"]["pixel_accuracy"] == pytest.approx(100.0 / 23)
