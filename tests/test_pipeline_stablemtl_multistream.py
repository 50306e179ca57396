"""StableMTLMultiStreamPipeline: equals stage 1 when untrained, two UNet calls, save/load, Hub layout."""

import json

import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders
from multistream_fixtures import frames, randomize

from stablemtl import StableMTLPipeline
from stablemtl.models.task_attention import TaskAttention
from stablemtl.pipelines.pipeline_stablemtl_multistream import StableMTLMultiStreamPipeline
from stablemtl.testing import make_tiny_sd_folder

TASKS = ["depth", "normal", "semantic", "optical_flow"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    base = make_tiny_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)
    pipe = StableMTLPipeline.from_base(base, tasks=TASKS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def multistream(stage1, **kwargs) -> StableMTLMultiStreamPipeline:
    pipe = StableMTLMultiStreamPipeline.from_stage1(stage1, query_hidden_dim=16, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_untrained_pipeline_predicts_what_stage1_predicts(stage1):
    pipe = multistream(stage1)
    image, next_image = frames(), frames(seed=1)
    ours = pipe(image, next_image=next_image, tasks=["semantic", "depth"], batch_size=2, output_type="pt")
    theirs = stage1(image, next_image=next_image, tasks=["semantic", "depth"], batch_size=2, output_type="pt")
    assert torch.equal(ours.semantic, theirs.semantic)
    torch.testing.assert_close(ours.depth, theirs.depth, atol=1e-5, rtol=1e-5)


def test_two_unet_calls_and_one_vae_encode_per_batch(stage1):
    pipe = multistream(stage1)
    randomize(pipe.task_attention, seed=3, scale=0.2)
    calls = {"unet": [], "aux_unet": [], "encoder": []}
    hooks = [
        pipe.unet.register_forward_pre_hook(lambda m, a: calls["unet"].append(a[0].shape[0])),
        pipe.aux_unet.register_forward_pre_hook(lambda m, a: calls["aux_unet"].append(a[0].shape[0])),
        pipe.vae.encoder.register_forward_pre_hook(lambda m, a: calls["encoder"].append(a[0].shape[0])),
    ]
    try:
        out = pipe(frames(), next_image=frames(seed=1), tasks=["depth", "optical_flow"], batch_size=2)
    finally:
        for h in hooks:
            h.remove()
    # depth and optical_flow attend to the 4 tasks' features (each to the 3 others): 4 aux rows per image.
    assert calls == {"unet": [4], "aux_unet": [8], "encoder": [4]}
    assert list(out.predictions) == ["depth", "optical_flow"]


def test_batched_call_equals_per_image_per_task_calls(stage1):
    pipe = multistream(stage1)
    randomize(pipe.task_attention, seed=3, scale=0.2)
    image, next_image = frames(3), frames(3, seed=1)
    together = pipe(image, next_image=next_image, tasks=TASKS, batch_size=3, output_type="pt")
    for task in ("depth", "optical_flow"):
        for i in range(3):
            alone = pipe(image[i : i + 1], next_image=next_image[i : i + 1], tasks=[task], output_type="pt")
            torch.testing.assert_close(together[task][i : i + 1], alone[task], atol=1e-5, rtol=1e-5)
    stage1_depth = stage1(image, next_image=next_image, tasks=["depth"], batch_size=3, output_type="pt")
    assert (together.depth - stage1_depth.depth).abs().max() > 1e-4  # the task attention acts


def test_save_load_round_trip_and_hub_layout(stage1, tmp_path, monkeypatch):
    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    pipe = multistream(stage1, layers="dec")
    randomize(pipe.task_attention, seed=3, scale=0.2)
    image = frames(1)
    before = pipe(image, tasks=["depth", "normal"], output_type="pt")
    pipe.save_pretrained(tmp_path / "ms")
    index = json.loads((tmp_path / "ms" / "model_index.json").read_text())
    assert index["task_attention"] == ["task_attention", "TaskAttention"]
    assert index["aux_unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (tmp_path / "ms" / "task_attention" / "task_attention.py").is_file()
    assert (tmp_path / "ms" / "pipeline_stablemtl_multistream.py").is_file()
    assert not list((tmp_path / "ms").rglob("*.bin"))
    files = [str(p.relative_to(tmp_path / "ms")) for p in (tmp_path / "ms").rglob("*") if p.is_file()]
    custom, _ = _get_custom_components_and_folders("me/stablemtl-ms", index, files)
    assert custom == {"task_attention": "task_attention"}

    loaded = StableMTLMultiStreamPipeline.from_pretrained(tmp_path / "ms")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.task_attention, TaskAttention) and loaded.task_attention.active_layers == list(
        range(7, 16)
    )
    for name in ("unet", "aux_unet", "task_attention", "vae"):
        saved_state, loaded_state = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved_state.keys() == loaded_state.keys()
        assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state), name
    after = loaded(image, tasks=["depth", "normal"], output_type="pt")
    for task in ("depth", "normal"):
        torch.testing.assert_close(after[task], before[task], atol=1e-4, rtol=1e-3)

    # Plain diffusers, as a custom pipeline from the folder (remote code, trusted explicitly).
    plain = DiffusionPipeline.from_pretrained(
        tmp_path / "ms", custom_pipeline=str(tmp_path / "ms" / "pipeline_stablemtl_multistream.py"),
        trust_remote_code=True,
    )  # fmt: skip
    plain.set_progress_bar_config(disable=True)
    again = plain(image, tasks=["depth"], output_type="pt")
    torch.testing.assert_close(again.depth, before.depth, atol=1e-4, rtol=1e-3)


def test_bad_arguments(stage1):
    with pytest.raises(ValueError, match="task token"):
        StableMTLMultiStreamPipeline.from_stage1(stage1, tasks=["depth", "albedo"])
    with pytest.raises(ValueError, match="capture_point"):
        multistream(stage1, capture_point="afterSelfAttn_residual")


def test_the_evaluation_cli_loads_it_by_the_class_it_saved(stage1, tmp_path):
    from stablemtl.cli.evaluate import load_predictor

    multistream(stage1).save_pretrained(tmp_path / "ms")
    predictor = load_predictor(str(tmp_path / "ms"), device="cpu", dtype="bf16")
    assert type(predictor) is StableMTLMultiStreamPipeline
    assert predictor.task_attention.dtype == torch.bfloat16 and predictor.aux_unet.dtype == torch.bfloat16
    out = predictor.predict(frames(1), None, ["depth", "normal"])
    assert out["depth"].shape == (1, 1, 32, 40) and torch.isfinite(out["normal"].float()).all()


def test_model_cpu_offload_hooks_both_unets_and_keeps_the_task_attention_placed(stage1):
    pipe = multistream(stage1)
    randomize(pipe.task_attention, seed=3, scale=0.2)
    image = frames(1)
    expected = pipe(image, tasks=["depth"], output_type="pt").depth
    # On this CPU-only machine the "accelerator" is the CPU itself: the hooks still run and chain.
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.unet, "_hf_hook") and hasattr(pipe.aux_unet, "_hf_hook")
    assert not hasattr(pipe.task_attention, "_hf_hook")  # called from inside the UNet: never offloaded
    torch.testing.assert_close(pipe(image, tasks=["depth"], output_type="pt").depth, expected)
