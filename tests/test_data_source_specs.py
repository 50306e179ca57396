"""load_source specs: reader mappings and strings, datasets tables (local or Hub layout, streaming), errors,
and reader sources feeding the training sampler and the evaluator unchanged."""

import logging

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from PIL import Image

from stablemtl.data import load_source, make_dataset
from stablemtl.data.readers import Reader
from stablemtl.data.readers.formats import write_png16


@pytest.fixture
def hypersim(tmp_path):
    scene = tmp_path / "hypersim" / "ai_001_001"
    scene.mkdir(parents=True)
    for i in range(4):
        key = f"cam_00_fr{i:04d}"
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(scene / f"rgb_{key}.png")
        write_png16(scene / f"depth_plane_{key}.png", np.full((16, 16), 1000 + 100 * i, np.uint16))
        np.save(scene / f"normal_cam_{key}.npy", np.tile(np.float32([0, 0, 1]), (16, 16, 1)))
        np.save(scene / f"normal_valid_mask_{key}.npy", np.ones((16, 16), bool))
        for kind in ("albedo", "shading"):
            Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(scene / f"{kind}_{key}.png")
    return tmp_path / "hypersim"


def test_mapping_and_string_specs_open_the_same_reader(hypersim):
    a = load_source({"reader": "hypersim", "root": hypersim, "tasks": ["depth"], "resolution": None})
    b = load_source(f"hypersim:{hypersim}")
    assert (
        len(a) == len(b) == 4 and a.tasks == ["depth"] and b.tasks == ["depth", "normal", "albedo", "shading"]
    )
    assert a[2]["labels"]["depth"][0, 0, 0].item() == pytest.approx(1.2)
    assert b[2]["image"].shape == (3, 288, 384)  # the string form uses the official resolution


def test_spec_errors_are_clear(hypersim, tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_source({"reader": "hypersim", "root": tmp_path / "nowhere"})
    with pytest.raises(ValueError, match="reader 'hypersm' is unknown"):
        load_source({"reader": "hypersm", "root": hypersim})
    with pytest.raises(ValueError, match="exactly one of"):
        load_source({"reader": "hypersim", "hub": "x/y"})
    with pytest.raises(ValueError, match="unexpected keyword argument 'colour'"):
        load_source({"reader": "hypersim", "root": hypersim, "colour": 1})
    with pytest.raises(ValueError, match="does not label"):
        load_source({"reader": "hypersim", "root": hypersim, "tasks": ["semantic"]})
    with pytest.raises(ValueError, match=r"split file 'missing\.txt' does not exist"):
        load_source({"reader": "hypersim", "root": hypersim, "split": "missing.txt"})
    with pytest.raises(ValueError, match="resolution must be"):
        load_source({"reader": "hypersim", "root": hypersim, "resolution": [4]})


def test_a_datasets_table_from_a_data_folder_map_style_and_streaming(tmp_path):
    saved = make_dataset("flying", 2, tmp_path / "saved", size=16)
    parquet = tmp_path / "hub_layout" / "data"
    parquet.mkdir(parents=True)
    load_from_disk(str(saved)).to_parquet(str(parquet / "train-00000-of-00001.parquet"))
    reference = load_source(saved)
    table = load_source({"hub": str(tmp_path / "hub_layout"), "split": "train"})
    assert len(table) == 2 and table.source == "flying"
    for key in ("image", "next_image"):
        torch.testing.assert_close(table[1][key], reference[1][key])
    streamed = list(
        load_source({"hub": str(tmp_path / "hub_layout"), "streaming": True}, tasks=["scene_flow"])
    )
    assert len(streamed) == 2 and list(streamed[0]["labels"]) == ["scene_flow"]
    torch.testing.assert_close(streamed[0]["labels"]["scene_flow"], reference[0]["labels"]["scene_flow"])
    with pytest.raises(ValueError, match="cannot be augmented"):
        load_source({"hub": str(tmp_path / "hub_layout"), "streaming": True}, augment=True)


def test_a_saved_folder_of_an_unknown_source_says_which_augmentation_it_gets(tmp_path, caplog):
    saved = make_dataset("flying", 1, tmp_path / "saved", size=16)
    table = load_from_disk(str(saved)).map(lambda row: {"source": "mine"})
    table.save_to_disk(str(tmp_path / "mine"))
    (tmp_path / "mine" / "state.json").touch(exist_ok=True)
    with caplog.at_level(logging.WARNING):
        dataset = load_source(tmp_path / "mine", augment=True)
    assert dataset.augmentation.hflip and "horizontal flip only" in caplog.text


def test_reader_sources_feed_the_training_sampler_and_the_evaluator(hypersim):
    from stablemtl.cli.evaluate import load_samples
    from stablemtl.training.config import TrainConfig
    from stablemtl.training.data import build_training_data

    spec = f"hypersim:{hypersim}"
    config = TrainConfig(train_data=[spec], tasks=["shading", "depth"], train_batch_size=2)
    _, loader, _ = build_training_data(config)
    batches = iter(loader)
    for task, channels in (("shading", 1), ("shading", 1), ("depth", 1)):  # round robin, 2 micro-batches each
        (group,) = next(batches)
        assert group["task"] == task and group["label"].shape == (2, channels, 288, 384)
        assert group["source"] == ["hypersim", "hypersim"]
    samples = list(load_samples([spec], limit=3))
    assert len(samples) == 3 and set(samples[0]["labels"]) == {"depth", "normal", "albedo", "shading"}


def test_a_yaml_spec_file_and_the_shipped_data_configs(hypersim, tmp_path):
    import inspect
    from pathlib import Path

    import yaml

    from stablemtl.data.readers import get_reader
    from stablemtl.training.config import load_config

    (tmp_path / "h.yaml").write_text(
        f"reader: hypersim\nroot: {hypersim}\nresolution: [8, 8]\ntasks: [depth]\n"
    )
    assert load_source(str(tmp_path / "h.yaml"))[0]["labels"]["depth"].shape == (1, 8, 8)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold one source mapping"):
        load_source(str(tmp_path / "list.yaml"))
    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted((configs / "data").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        cls = get_reader(spec.pop("reader"))
        accepted = set(inspect.signature(cls.__init__).parameters) | set(
            inspect.signature(Reader.__init__).parameters
        )
        assert set(spec) <= accepted, f"{path.name}: options {set(spec) - accepted} are not {cls.name}'s"
        if isinstance(spec.get("split"), dict):
            assert set(spec["split"]) <= set(cls.available_tasks), path.name
    stage1 = load_config(configs / "stage1.yaml")
    names = {yaml.safe_load((configs.parent / entry).read_text())["reader"] for entry in stage1.train_data}
    assert names == {"hypersim", "vkitti2", "flyingthings3d"}
    assert {s for weights in stage1.source_weights.values() for s in weights} <= names
