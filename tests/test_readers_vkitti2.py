"""Virtual KITTI 2 reader on a tiny scene written in vKITTI 2's own formats."""

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source
from stablemtl.data.readers.formats import write_png16
from stablemtl.tasks import IGNORE_INDEX

H, W = 6, 8


@pytest.fixture
def vkitti(tmp_path):
    base = tmp_path / "vkitti2" / "Scene02" / "clone"
    frames = base / "frames"
    for kind in ("rgb", "depth", "classSegmentation", "forwardFlow", "forwardSceneFlow"):
        (frames / kind / "Camera_0").mkdir(parents=True)
    for i in (0, 1):
        Image.fromarray(np.full((H, W, 3), 60 * (i + 1), np.uint8)).save(
            frames / f"rgb/Camera_0/rgb_{i:05d}.jpg"
        )
    depth = np.full((H, W), 1234, np.uint16)  # 12.34 m
    depth[0, :] = 65535  # sky
    for i in (0, 1):
        write_png16(frames / f"depth/Camera_0/depth_{i:05d}.png", depth)
    classes = np.zeros((H, W, 3), np.uint8)
    classes[...] = (100, 60, 100)  # Road
    classes[1, 1] = (255, 127, 80)  # Car -> vehicle
    classes[1, 2] = (0, 139, 139)  # Van -> vehicle
    classes[1, 3] = (210, 0, 200)  # Terrain -> ignored
    classes[0, :] = (90, 200, 255)  # Sky
    Image.fromarray(classes).save(frames / "classSegmentation/Camera_0/classgt_00000.png")
    flow = np.full((H, W, 3), 32768, np.uint16)
    flow[..., 2] = 1
    flow[2, 2] = (65535, 0, 1)  # u = +(W-1), v = -(H-1)
    flow[0, :, 2] = 0  # sky: invalid
    write_png16(frames / "forwardFlow/Camera_0/flow_00000.png", flow)
    scene = np.full((H, W, 3), 32768, np.uint16)
    scene[2, 2] = (65535, 0, 65535)  # (+10, -10, +10) m
    write_png16(frames / "forwardSceneFlow/Camera_0/sceneFlow_00000.png", scene)
    (base / "intrinsic.txt").write_text(
        "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n0 0 100.0 100.0 3.5 2.5\n1 0 100.0 100.0 3.5 2.5\n"
    )
    return tmp_path / "vkitti2"


def test_depth_semantic_and_flows_decode_to_known_values(vkitti):
    split = vkitti / "depth_train.txt"
    split.write_text("original/Scene02/clone/frames/depth/Camera_0/depth_00000.png\n")  # the official format
    reader = load_source({"reader": "vkitti2", "root": vkitti, "split": split, "resolution": None})
    sample = reader[0]
    assert "next_image" in sample and sample["next_image"][0, 0, 0].item() == pytest.approx(
        120 / 255, abs=0.02
    )
    depth = sample["labels"]["depth"]
    assert depth[0, 3, 3].item() == pytest.approx(12.34, abs=1e-5)  # centimetres -> metres
    assert not sample["valid"]["depth"][0].any() and sample["valid"]["depth"][1:].all()  # sky beyond 80 m
    ids = sample["labels"]["semantic"][0]
    assert ids[3, 3] == 0 and ids[1, 1] == 7 and ids[1, 2] == 7 and ids[0, 0] == 6
    assert ids[1, 3] == IGNORE_INDEX and not sample["valid"]["semantic"][1, 3]
    flow = sample["labels"]["optical_flow"]
    torch.testing.assert_close(flow[:, 2, 2], torch.tensor([W - 1.0, -(H - 1.0)]))
    assert flow[:, 3, 3].abs().max() < 1e-3  # 32768 encodes (almost exactly) zero
    assert not sample["valid"]["optical_flow"][0].any() and sample["valid"]["optical_flow"][1:].all()
    torch.testing.assert_close(sample["labels"]["scene_flow"][:, 2, 2], torch.tensor([10.0, -10.0, 10.0]))
    assert torch.equal(sample["valid"]["scene_flow"], sample["valid"]["optical_flow"])
    torch.testing.assert_close(sample["intrinsics"][0], torch.tensor([100.0, 0.0, 3.5]))


def test_normals_from_depth_face_the_camera_on_a_flat_wall(vkitti):
    reader = load_source({"reader": "vkitti2", "root": vkitti, "resolution": None, "tasks": ["normal"]})
    sample = reader[0]
    normal, valid = sample["labels"]["normal"], sample["valid"]["normal"]
    assert valid[1:].all() and not valid[0].any()
    torch.testing.assert_close(normal[:, 3, 4], torch.tensor([0.0, 0.0, 1.0]))


def test_flow_frames_need_a_next_frame_and_the_resize_rescales_flow(vkitti):
    # Frame 1 has no frame 2 and no forward flow: listing skips it for flow, keeps it for depth.
    assert len(load_source({"reader": "vkitti2", "root": vkitti, "tasks": ["optical_flow"]})) == 1
    assert len(load_source({"reader": "vkitti2", "root": vkitti, "tasks": ["depth"]})) == 2
    reader = load_source(
        {"reader": "vkitti2", "root": vkitti, "tasks": ["optical_flow"], "resolution": [12, 16]}
    )
    flow = reader[0]["labels"]["optical_flow"]
    assert flow.shape == (2, 12, 16)
    torch.testing.assert_close(flow[:, 4, 4], torch.tensor([2 * (W - 1.0), 2 * -(H - 1.0)]))


def test_augmentation_jitters_colours_for_optical_flow_only(vkitti):
    reader = load_source("vkitti2:" + str(vkitti), augment=True)
    assert reader.augmentation.jitter is None and reader.augmentation.hflip
    assert reader.task_augmentation["optical_flow"].jitter == (0.4, 0.4, 0.2, 0.127)


def test_an_unknown_class_colour_is_an_error(vkitti):
    path = vkitti / "Scene02/clone/frames/classSegmentation/Camera_0/classgt_00000.png"
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(path)
    reader = load_source({"reader": "vkitti2", "root": vkitti, "tasks": ["semantic"]})
    with pytest.raises(ValueError, match="no vKITTI 2 class"):
        reader[0]


def test_per_task_split_files_label_only_the_tasks_that_list_a_frame(vkitti):
    (vkitti / "depth.txt").write_text(
        "Scene02/clone/frames/depth/Camera_0/depth_00000.png\nScene02/clone/frames/depth/Camera_0/depth_00001.png\n"
    )
    (vkitti / "semantic.txt").write_text(
        "Scene02/clone/frames/classSegmentation/Camera_0/classgt_00000.png\n"
    )
    split = {"depth": "depth.txt", "semantic": "semantic.txt"}
    reader = load_source({"reader": "vkitti2", "root": vkitti, "split": split, "resolution": None})
    assert reader.tasks == ["depth", "semantic"] and len(reader) == 2
    assert reader.rows_with_task("depth") == [0, 1] and reader.rows_with_task("semantic") == [0]
    assert set(reader[0]["labels"]) == {"depth", "semantic"} and set(reader[1]["labels"]) == {"depth"}
    with pytest.raises(ValueError, match=r"none for tasks \['normal'\]"):
        load_source(
            {
                "reader": "vkitti2",
                "root": vkitti,
                "split": {"depth": "depth.txt"},
                "tasks": ["depth", "normal"],
            }
        )
