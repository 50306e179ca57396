"""Augmentation keeps labels consistent with the image; loader determinism; single-task collation."""

import pytest
import torch

from stablemtl.data import (
    Augmentation,
    augment_sample,
    collate_task_batch,
    load_source,
    make_dataset,
    render_sample,
)
from stablemtl.data.augment import color_jitter
from stablemtl.utils.memo import ByteBudgetMemo

ALWAYS_H = Augmentation(hflip=True, vflip=False, flip_p=1.0)
ALWAYS_V = Augmentation(hflip=False, vflip=True, flip_p=1.0)


def _reprojection_error(s):
    """Max |project(depth K^-1 p + scene_flow) - (p + flow)| over valid flow pixels (pixels)."""
    k, depth = s["intrinsics"], s["labels"]["depth"][0]
    h, w = depth.shape
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    p = torch.stack([(u - k[0, 2]) / k[0, 0] * depth, (v - k[1, 2]) / k[1, 1] * depth, depth])
    q = p + s["labels"]["scene_flow"]
    proj = torch.stack([k[0, 0] * q[0] / q[2] + k[0, 2], k[1, 1] * q[1] / q[2] + k[1, 2]])
    err = (proj - torch.stack([u, v]) - s["labels"]["optical_flow"]).abs().amax(0)
    return err[s["valid"]["optical_flow"] & s["valid"]["depth"]].max().item()


@pytest.mark.parametrize("aug", [ALWAYS_H, ALWAYS_V])
def test_flips_keep_every_label_consistent(aug):
    s = render_sample("street", seed=3, size=32)
    f = augment_sample(s, aug, torch.Generator().manual_seed(0))
    dim = -1 if aug.hflip else -2
    assert torch.equal(f["image"], s["image"].flip(dim)) and torch.equal(
        f["next_image"], s["next_image"].flip(dim)
    )
    assert torch.equal(f["labels"]["depth"], s["labels"]["depth"].flip(dim))
    assert torch.equal(f["labels"]["semantic"], s["labels"]["semantic"].flip(dim))
    axis = 0 if aug.hflip else 1  # the flipped axis: x for normals, u / x for flows
    for task in ("normal", "optical_flow", "scene_flow"):
        expected = s["labels"][task].flip(dim).clone()
        expected[axis] = -expected[axis]
        assert torch.equal(f["labels"][task], expected), task
        assert torch.equal(f["valid"][task], s["valid"][task].flip(dim))
    # The flipped sample is itself a valid rendering: depth, scene flow and flow still agree exactly.
    assert _reprojection_error(s) < 2e-3 and _reprojection_error(f) < 2e-3
    assert f["intrinsics"][0 if aug.hflip else 1, 2].item() == pytest.approx(
        31 - s["intrinsics"][axis, 2].item()
    )
    assert torch.equal(s["image"], render_sample("street", seed=3, size=32)["image"])  # input untouched


def test_normal_flip_matches_the_mirrored_camera_convention():
    # +x is image-left: a surface seen on the left facing right has normal x < 0; mirrored, x > 0.
    s = render_sample("indoor", seed=1, size=32, split="train")
    f = augment_sample(s, ALWAYS_H, torch.Generator())
    assert torch.allclose(f["labels"]["normal"][0, :, 0], -s["labels"]["normal"][0, :, -1])


def test_color_jitter_is_joint_deterministic_and_bounded():
    s = render_sample("flying", seed=2, size=24)
    frames = [s["image"], s["image"].clone()]
    a = color_jitter(frames, (0.3, 0.3, 0.3, 0.159), torch.Generator().manual_seed(5))
    b = color_jitter(frames, (0.3, 0.3, 0.3, 0.159), torch.Generator().manual_seed(5))
    assert torch.equal(a[0], a[1])  # one draw for both frames
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[0], s["image"], atol=1e-3)
    assert a[0].min() >= 0 and a[0].max() <= 1
    # Brightness alone is a single multiplicative factor within [1 - 0.4, 1 + 0.4].
    (bright,) = color_jitter([s["image"]], (0.4, 0.0, 0.0, 0.0), torch.Generator().manual_seed(1))
    mask = (s["image"] > 0.05) & (bright < 0.999)
    ratio = bright[mask] / s["image"][mask]
    assert ratio.std() < 1e-4 and 0.6 <= ratio.mean() <= 1.4


def test_loader_augmentation_is_seeded_per_epoch(tmp_path):
    ds = load_source(make_dataset("flying", 4, tmp_path / "f", size=16, seed=0), augment=True, seed=7)
    assert ds.augmentation.vflip and ds.augmentation.jitter is not None  # FlyingThings3D-like
    again = load_source(tmp_path / "f", augment=True, seed=7)
    plain = load_source(tmp_path / "f")
    first = [ds[i]["image"] for i in range(4)]
    assert all(torch.equal(a, again[i]["image"]) for i, a in enumerate(first))
    assert all(not torch.equal(a, plain[i]["image"]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[i]["image"]) for i, a in enumerate(first))
    street = load_source(make_dataset("street", 1, tmp_path / "s", size=16), augment=True)
    assert not street.augmentation.vflip and street.augmentation.hflip


def test_a_row_memo_serves_copies_of_the_decoded_rows(tmp_path):
    folder = make_dataset("street", 3, tmp_path / "s", size=16, seed=0)
    plain, memoised = load_source(folder, augment=True, seed=2), load_source(folder, augment=True, seed=2)
    memoised.row_memo = ByteBudgetMemo(2**20, "rows")
    for _ in range(2):
        for index, task in ((0, "depth"), (1, None), (-1, "normal")):
            a, b = plain.item(index, task), memoised.item(index, task)
            assert a.keys() == b.keys() and a["labels"].keys() == b["labels"].keys()
            assert torch.equal(a["image"], b["image"]) and all(
                torch.equal(a["labels"][t], b["labels"][t]) and torch.equal(a["valid"][t], b["valid"][t])
                for t in a["labels"]
            )
    assert (memoised.row_memo.hits, memoised.row_memo.misses, len(memoised.row_memo)) == (3, 3, 3)
    # A caller may change what it got, in place: the memo keeps the row as decoded.
    sample = memoised.raw(0, "depth")
    sample["image"].zero_()
    sample["labels"]["depth"].mul_(2)
    del sample["valid"]["depth"]
    assert torch.equal(memoised.raw(0, "depth")["labels"]["depth"], plain.raw(0, "depth")["labels"]["depth"])
    assert torch.equal(memoised.raw(0, "depth")["image"], plain.raw(0, "depth")["image"])
    assert "depth" in memoised.raw(0, "depth")["valid"]
    with pytest.raises(IndexError, match="out of range"):
        memoised.raw(3)


def test_collate_task_batch(tmp_path):
    ds = load_source(make_dataset("street", 3, tmp_path / "s", size=16))
    samples = [ds[i] for i in range(3)]
    flow = collate_task_batch(samples, "optical_flow")
    assert flow["image"].shape == (3, 3, 16, 16) and flow["next_image"].shape == (3, 3, 16, 16)
    assert flow["label"].shape == (3, 2, 16, 16) and flow["valid"].shape == (3, 16, 16)
    assert (
        flow["valid"].dtype == torch.bool
        and flow["source"] == ["street"] * 3
        and flow["task"] == "optical_flow"
    )
    depth = collate_task_batch(samples, "depth")
    assert depth["next_image"] is None and torch.equal(depth["label"][1], samples[1]["labels"]["depth"])
    with pytest.raises(ValueError, match=r"sample 0 .* has no 'albedo' label"):
        collate_task_batch(samples, "albedo")
    with pytest.raises(ValueError, match="task 'flow' is unknown"):
        collate_task_batch(samples, "flow")
    single = dict(samples[0])
    del single["next_image"]
    with pytest.raises(ValueError, match="no next_image"):
        collate_task_batch([single], "scene_flow")


def _is_raw_or_mirrored(image, raw):
    return torch.equal(image, raw) or torch.equal(image, raw.flip(-1))


def test_loader_augments_per_source_and_task(tmp_path):
    # Spec §3.2: vKITTI flips for every task but jitters colours only for optical flow; Hypersim only
    # flips; FlyingThings3D flips both ways and jitters.
    street = load_source(make_dataset("street", 3, tmp_path / "s", size=16), augment=True, seed=3)
    plain = load_source(tmp_path / "s")
    assert street.augmentation.jitter is None and street.task_augmentation["optical_flow"].jitter is not None
    mirrored = 0
    for i in range(3):
        raw = plain[i]
        depth = street.item(i, "depth")
        for task in ("depth", "normal", "semantic", "scene_flow"):
            got = street.item(i, task)
            assert _is_raw_or_mirrored(got["image"], raw["image"]), task
            assert _is_raw_or_mirrored(got["next_image"], raw["next_image"]), task
        mirrored += torch.equal(depth["image"], raw["image"].flip(-1)) and not torch.equal(
            depth["image"], raw["image"]
        )
        assert torch.equal(street[i]["image"], depth["image"])  # no task: the source-wide augmentation
        flow = street.item(i, "optical_flow")
        assert not _is_raw_or_mirrored(flow["image"], raw["image"])  # colour-jittered
        # Same key, same flip draw: a task's item carries that task's label of the flip-only sample, and
        # only that label (a training item reads and decodes one task's columns).
        everything = street[i]
        for task, item in (("optical_flow", flow), ("depth", depth)):
            assert set(item["labels"]) == {task} == set(item["valid"])
            assert torch.equal(item["labels"][task], everything["labels"][task]), task
            assert torch.equal(item["valid"][task], everything["valid"][task]), task
        assert set(everything["labels"]) == set(raw["labels"])
    assert mirrored >= 1
    with pytest.raises(ValueError, match="task 'depht' is unknown"):
        street.item(0, "depht")
    # The training data path asks for the sample of the key's task.
    from stablemtl.training.data import KeyedSources

    keyed = KeyedSources([street])
    task, flow = keyed[("optical_flow", 0, 2, 0)]
    assert task == "optical_flow" and torch.equal(flow["image"], street.item(2, "optical_flow")["image"])
    assert torch.equal(keyed[("depth", 0, 2, 0)][1]["image"], street.item(2, "depth")["image"])
    indoor = load_source(make_dataset("indoor", 2, tmp_path / "i", size=16), augment=True)
    raw = load_source(tmp_path / "i")[1]
    for task in indoor.tasks:
        assert _is_raw_or_mirrored(indoor.item(1, task)["image"], raw["image"]), task
    flying = load_source(make_dataset("flying", 1, tmp_path / "f", size=16), augment=True)
    raw = load_source(tmp_path / "f")[0]
    for task in ("optical_flow", "scene_flow"):
        got = flying.item(0, task)
        assert not torch.equal(got["image"], raw["image"]) and got["image"].shape == raw["image"].shape
    # An explicit augmentation applies to every task.
    fixed = load_source(tmp_path / "s", augment=True, augmentation=ALWAYS_V)
    assert fixed.task_augmentation == {}
    assert torch.equal(fixed.item(0, "optical_flow")["image"], plain[0]["image"].flip(-2))


def test_bad_augmentation_settings_raise():
    with pytest.raises(ValueError, match="flip_p"):
        Augmentation(flip_p=1.5)
    with pytest.raises(ValueError, match="jitter"):
        Augmentation(jitter=(0.4, 0.4, 0.2, 0.7))
    with pytest.raises(ValueError, match="jitter"):
        Augmentation(jitter=(0.4, -0.1, 0.2, 0.1))
