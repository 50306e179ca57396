"""HiTT phase 2 on a tiny rendered source: discovery storage, flipped serving, collation, label targets."""

import pytest
import torch
from test_models_hitt import tiny_hitt

from stablemtl.data import load_source
from stablemtl.data.augment import Augmentation
from stablemtl.data.generate import make_dataset
from stablemtl.training.hitt_pseudo import PseudoTargets, PseudoTargetSource, collate_pseudo, discover_source
from stablemtl.training.hitt_targets import decode_space_targets, fit_model_centres, head_specs


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    return make_dataset("street", 3, tmp_path_factory.mktemp("street") / "s", size=32, seed=0)


def model_for(source, **kwargs):
    return tiny_hitt(head_specs(source.tasks), **kwargs)


def test_discovery_is_stored_and_read_back(street, tmp_path):
    source = load_source(street)
    model = model_for(source)
    path = discover_source(model, source, tmp_path / "pseudo.safetensors", batch_size=2)
    store = PseudoTargets(path)
    assert len(store) == 3 and store.tasks == model.task_names
    raw = source.raw(1)
    stored, labelled = store.load(1)
    assert labelled == [t for t in model.task_names if t in raw["labels"]]
    next_images = raw["next_image"][None] if raw.get("next_image") is not None else None
    expected = model.discover(raw["image"][None], next_images)
    for task, fields in stored.items():
        assert torch.equal(fields["label"].long(), expected[task]["label"][0])
        torch.testing.assert_close(
            fields["confidence"].float(), expected[task]["confidence"][0], atol=1e-3, rtol=0
        )
        assert fields["feature"].shape == expected[task]["feature"][0].shape
    with pytest.raises(IndexError):
        store.load(3)


def test_served_targets_flip_with_the_image(street, tmp_path):
    source = load_source(street)
    model = model_for(source)
    store = PseudoTargets(discover_source(model, source, tmp_path / "p.safetensors"))
    centres = {t: model.task_centres(t) for t in model.task_names if model.head(t).is_regression}
    plain = PseudoTargetSource(source, store, centres).item(0)
    source.augmentation = Augmentation(hflip=True, flip_p=1.0)  # always flip horizontally
    flipped = PseudoTargetSource(source, store, centres).item(0)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    for task, fields in plain["pseudo"].items():
        other = flipped["pseudo"][task]
        assert torch.equal(other["confidence"], fields["confidence"].flip(-1))
        assert torch.equal(other["feature"], fields["feature"].flip(-1))
    if "optical_flow" in plain["pseudo"]:
        u = plain["pseudo"]["optical_flow"]["value"][0]
        assert torch.equal(flipped["pseudo"]["optical_flow"]["value"][0], -u.flip(-1))
    batch = collate_pseudo([plain, flipped], model.task_names)
    for task in plain["pseudo"]:
        assert batch["targets"][task]["confidence"].shape[0] == 2
    assert all(batch["labelled"][t].tolist() == [t in plain["labelled"]] * 2 for t in model.task_names)


def test_head_specs_follow_the_registry():
    specs = head_specs(["semantic", "depth", "optical_flow"], {"depth": {"num_bins": 12}})
    assert [s["name"] for s in specs] == ["semantic", "depth", "optical_flow"]
    assert specs[0]["num_bins"] == 8 and specs[1]["num_bins"] == 12 and specs[2]["pair"] is True
    with pytest.raises(ValueError, match="8 classes"):
        head_specs(["semantic"], {"semantic": {"num_bins": 5}})
    with pytest.raises(ValueError, match="not trained"):
        head_specs(["depth"], {"normal": {"tau": 0.5}})
    with pytest.raises(ValueError, match="needs_pair"):
        head_specs(["depth"], {"depth": {"pair": True}})


def test_targets_live_in_the_decode_space_and_centres_fit_the_labels(street):
    source = load_source(street)
    sample = source.raw(0)
    if "depth" in sample["labels"]:
        target, valid = decode_space_targets(
            "depth", sample["labels"]["depth"][None], sample["valid"]["depth"][None]
        )
        assert target.shape[1] == 1 and target.min() >= 0 and target.max() <= 1 and valid.any()
    model = model_for(source)
    vector_tasks = [t for t in model.task_names if model.head(t).init in ("sphere", "grid")]
    before = {t: model.task_centres(t).clone() for t in vector_tasks}
    used = fit_model_centres(model, [source.raw(i) for i in range(3)], points_per_task=500)
    assert set(used) and set(used) <= set(vector_tasks)
    for task in used:
        assert not torch.equal(model.task_centres(task), before[task])
        if model.head(task).unit:
            torch.testing.assert_close(
                model.task_centres(task).norm(dim=1), torch.ones(model.head(task).num_bins)
            )
