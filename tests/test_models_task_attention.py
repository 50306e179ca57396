"""TaskAttention component: official sizes, zero init, save/load, loadable from a Hub pipeline folder."""

import json

import diffusers
import pytest
import torch
from diffusers.pipelines.pipeline_loading_utils import (
    ALL_IMPORTABLE_CLASSES,
    _get_custom_components_and_folders,
    get_class_obj_and_candidates,
)
from multistream_fixtures import TASKS, randomize, tiny_unet

from stablemtl.models.task_attention import TaskAttention

SD2_DIMS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]
SEVEN = ["normal", "depth", "semantic", "optical_flow", "scene_flow", "albedo", "shading"]


@pytest.mark.parametrize(("layers", "millions"), [("all", 390.5), ("dec", 209.2)])
def test_sd2_sizes_match_the_official_model(layers, millions):
    # The official model adds about 391 M (all 16 blocks) or 209 M (decoder) parameters for 7 tasks.
    with torch.device("meta"):
        model = TaskAttention(tasks={"names": SEVEN}, layer_dims=SD2_DIMS, layers=layers)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    assert model.active_layers == (list(range(16)) if layers == "all" else list(range(7, 16)))
    names = {n for n, _ in model.named_parameters()}
    assert "task_layers.7.task_to_q.depth.net.6.weight" in names
    assert "task_layers.15.task_to_k.shading.fc2.bias" in names
    assert "task_layers.9.task_norm_v.normal.weight" in names


def test_from_unet_reads_widths_and_decoder_start():
    model = TaskAttention.from_unet(tiny_unet(), TASKS, layers="dec", n_heads=4, query_hidden_dim=16)
    assert model.config.layer_dims == [32, 32, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 32, 32, 32]
    assert model.config.decoder_start == 7 and model.active_layers == list(range(7, 16))
    assert model.config.tasks == {"names": list(TASKS)}


def test_output_projection_starts_at_zero():
    model = TaskAttention(tasks={"names": ["a", "b", "c"]}, layer_dims=[8, 16], n_heads=2, query_hidden_dim=8)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 5, 16, generator=g)
    features = torch.randn(3, 2, 5, 16, generator=g)
    visible = torch.tensor([[False, True, True]] * 2 + [[True, False, True]] * 2)
    args = (1, hidden, features, ["a", "a", "b", "b"], ["a", "b", "c"], torch.tensor([0, 1, 0, 1]), visible)
    assert torch.equal(model(*args), torch.zeros_like(hidden))
    randomize(model)
    out = model(*args)
    assert out.abs().min() > 0
    # A row's own task is invisible: changing its features leaves that row alone.
    features2 = features.clone()
    features2[0] += 1.0
    out2 = model(1, hidden, features2, *args[3:])
    assert torch.equal(out2[:2], out[:2]) and not torch.equal(out2[2:], out[2:])


def test_rows_without_visible_tasks_get_nothing():
    model = TaskAttention(tasks={"names": ["a", "b"]}, layer_dims=[8], n_heads=2, query_hidden_dim=8)
    randomize(model)
    hidden, features = torch.randn(2, 3, 8), torch.randn(2, 1, 3, 8)
    visible = torch.tensor([[False, True], [False, False]])
    out = model(0, hidden, features, ["a", "b"], ["a", "b"], torch.tensor([0, 0]), visible)
    assert out[0].abs().sum() > 0 and torch.equal(out[1], torch.zeros_like(out[1]))


def test_plain_fusion_has_no_attention_weights():
    model = TaskAttention(tasks={"names": ["a", "b"]}, layer_dims=[8], n_heads=2, fusion="sum")
    names = {n for n, _ in model.named_parameters()}
    assert not any("task_to_q" in n or "task_to_k" in n for n in names)
    assert any("task_to_v" in n for n in names) and "task_layers.0.to_out_task.weight" in names


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ["a", "b"]}, "tasks"),
        ({"tasks": {"names": ["a", "a"]}}, "tasks"),
        ({"tasks": {"names": ["a.b"]}}, "'.'"),
        ({"layers": "encoder"}, "layers"),
        ({"n_heads": 3}, "n_heads"),
        ({"fusion": "concat"}, "fusion"),
        ({"layer_dims": []}, "layer_dims"),
        ({"layers": "dec", "decoder_start": 5}, "decoder_start"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    settings = {"tasks": {"names": ["a", "b"]}, "layer_dims": [8, 8], "n_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        TaskAttention(**settings)


def test_save_load_round_trip(tmp_path):
    model = TaskAttention.from_unet(tiny_unet(), TASKS, layers="dec", query_hidden_dim=16, fusion="attention")
    randomize(model)
    model.save_pretrained(tmp_path / "task_attention")
    files = sorted(p.name for p in (tmp_path / "task_attention").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "task_attention.py"]
    loaded = TaskAttention.from_pretrained(tmp_path / "task_attention")
    settings = {k: v for k, v in model.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == settings
    assert loaded.active_layers == model.active_layers
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_pipeline_folder_with_the_component_passes_the_hub_download_step(tmp_path):
    model = TaskAttention.from_unet(tiny_unet(), TASKS, query_hidden_dim=16)
    model.save_pretrained(tmp_path / "task_attention")
    filenames = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    index = {
        "_class_name": "StableMTLMultiStreamPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "aux_unet": ["diffusers", "UNet2DConditionModel"],
        "task_attention": ["task_attention", "TaskAttention"],
        "tasks": {"names": list(TASKS)},
    }
    custom, folders = _get_custom_components_and_folders(
        "me/stablemtl", json.loads(json.dumps(index)), filenames
    )
    assert custom == {"task_attention": "task_attention"} and "task_attention" in folders
    # The package path as module name is what breaks Hub loading; and a list-valued setting is a component.
    with pytest.raises(ValueError, match="does not exist"):
        _get_custom_components_and_folders(
            "me/stablemtl",
            {**index, "task_attention": ["stablemtl.models.task_attention", "TaskAttention"]},
            filenames,
        )
    with pytest.raises(ValueError):
        _get_custom_components_and_folders("me/stablemtl", {**index, "tasks": list(TASKS)}, filenames)
    # What diffusers' loader then does with the remote-code file: import the class from the component folder.
    cls, _ = get_class_obj_and_candidates(
        "task_attention",
        "TaskAttention",
        ALL_IMPORTABLE_CLASSES,
        diffusers.pipelines,
        is_pipeline_module=False,
        component_name="task_attention",
        cache_dir=str(tmp_path),
        trust_remote_code=True,
    )
    loaded = cls.from_pretrained(tmp_path / "task_attention")
    assert loaded.config.tasks == {"names": list(TASKS)}
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
