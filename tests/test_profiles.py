"""Source profiles: which tasks each split labels, shifted domains, user profiles, bad names."""

import dataclasses

import numpy as np
import pytest
import torch

from stablemtl.data import Domain, SourceProfile, get_profile, profile_names, register_profile, render_sample
from stablemtl.data.profiles import _PROFILES
from stablemtl.data.synthetic import SceneBuilder, make_scene
from stablemtl.data.synthetic.lighting import Lights
from stablemtl.data.synthetic.sampling import make_camera

ALL = {"albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"}


def test_builtin_profiles_mirror_the_real_sources():
    assert {"indoor", "street", "flying"} <= set(profile_names())
    assert set(get_profile("indoor").train_tasks) == {"depth", "normal", "albedo", "shading"}
    assert set(get_profile("street").train_tasks) == {
        "depth",
        "normal",
        "semantic",
        "optical_flow",
        "scene_flow",
    }
    assert set(get_profile("flying").train_tasks) == {"optical_flow", "scene_flow"}
    assert not get_profile("indoor").needs_pair("train") and get_profile("indoor").needs_pair("test")


@pytest.mark.parametrize("profile,split", [("street", "train"), ("street", "test"), ("indoor", "train")])
def test_rendered_labels_are_exactly_the_split_tasks(profile, split):
    s = render_sample(profile, seed=0, size=24, split=split)
    assert set(s["labels"]) == set(get_profile(profile).tasks(split)) == set(s["valid"])
    assert s["source"] == profile
    for task, label in s["labels"].items():
        assert label.shape[-2:] == (24, 24) and s["valid"][task].dtype == torch.bool
        assert torch.isfinite(label.float()).all()
    if split == "test" and profile == "street":
        assert set(s["labels"]) == ALL


def test_street_camera_moves_forward_and_semantic_classes_appear():
    s = render_sample("street", seed=1, size=32)
    sf, valid = s["labels"]["scene_flow"], s["valid"]["scene_flow"]
    road = (s["labels"]["semantic"][0] == 0) & valid
    assert sf[2][road].mean() < -0.2  # static road comes towards the forward-moving camera
    assert s["valid"]["depth"].float().mean() < 1.0  # some sky


def test_shifted_domain_changes_appearance_and_camera():
    base = [make_scene("street", 0, 16, split="test", index=i) for i in range(4)]
    shifted = [make_scene("street", 0, 16, split="test", shift=True, index=i) for i in range(4)]
    focal = lambda scenes: np.mean([s.camera.intrinsics[0, 0].item() for s in scenes])  # noqa: E731
    height = lambda scenes: np.mean([s.camera.position[1].item() for s in scenes])  # noqa: E731
    assert focal(shifted) < focal(base)  # wider field of view
    assert height(shifted) > height(base) + 0.3
    assert not torch.allclose(base[0].sky_zenith, shifted[0].sky_zenith)
    a = render_sample("flying", seed=0, size=16, split="test")
    b = render_sample("flying", seed=0, size=16, split="test", shift=True)
    assert not torch.equal(a["image"], b["image"])
    assert set(a["labels"]) == set(b["labels"])


def _toy_builder(rng, domain, height, width):
    b = SceneBuilder()
    m = b.material("solid", [(0.5, 0.5, 0.5)])
    b.add(
        "sphere", (0.0, 0.0, 5.0), (1.0, 1.0, 1.0), m, semantic=7, move=(float(rng.uniform(-0.2, 0.2)), 0, 0)
    )
    cam = make_camera((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 60.0, height, width)
    lights = Lights(
        0.5, torch.tensor([0.0, 0.0, -1.0]), 0.5, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0)
    )
    return b.build(cam, cam, lights, (0.1, 0.1, 0.1), (0.2, 0.2, 0.2), 6)


def test_user_profile_is_a_small_declarative_description():
    prof = SourceProfile(
        "ball", _toy_builder, train_tasks=("depth", "semantic"), test_tasks=("depth", "scene_flow")
    )
    register_profile(prof)
    try:
        s = render_sample("ball", seed=0, size=17, split="train")
        assert set(s["labels"]) == {"depth", "semantic"} and "next_image" not in s
        assert s["labels"]["depth"][0, 8, 8].item() == pytest.approx(4.0, abs=1e-4)
        assert s["labels"]["semantic"][0, 8, 8].item() == 7 and s["labels"]["semantic"][0, 0, 0].item() == 6
        t = render_sample("ball", seed=0, size=17, split="test")
        assert "next_image" in t and t["valid"]["scene_flow"][8, 8]
        with pytest.raises(ValueError, match="already registered"):
            register_profile(prof)
        register_profile(dataclasses.replace(prof, train_tasks=("depth",)), overwrite=True)
        assert get_profile("ball").train_tasks == ("depth",)
    finally:
        _PROFILES.pop("ball", None)


def test_bad_profile_task_split_size_raise():
    with pytest.raises(ValueError, match=r"profile 'kitchen' is unknown; known: .*street"):
        render_sample("kitchen")
    with pytest.raises(ValueError, match="task 'edges' cannot be rendered"):
        SourceProfile("x", _toy_builder, train_tasks=("edges",), test_tasks=())
    with pytest.raises(ValueError, match="split 'val'"):
        render_sample("street", split="val")
    with pytest.raises(ValueError, match="size must be"):
        render_sample("street", size=4)
    with pytest.raises(ValueError, match="pattern 'plaid'"):
        SceneBuilder().material("plaid", [(0.1, 0.2, 0.3)])
    assert isinstance(Domain(), Domain)
