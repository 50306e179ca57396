"""StableMTLPipeline on the tiny SD components: outputs, batching, inputs, errors, persistence, Hub layout."""

import json
import logging
import os
import warnings

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders
from PIL import Image

from stablemtl import StableMTLPipeline
from stablemtl.hub import make_model_card
from stablemtl.models.task_tokens import TaskEmbeddings
from stablemtl.tasks import PAPER_TASKS, get_task, task_names
from stablemtl.testing import make_tiny_sd_folder

ALL_TASKS = ["semantic", "depth", "normal", "optical_flow", "scene_flow", "albedo", "shading"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On the shared 2-core machine two OpenMP threads are far slower on these tiny tensors.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


def _fresh(base, **kwargs) -> StableMTLPipeline:
    pipe = StableMTLPipeline.from_base(base, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(base):
    return _fresh(base)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "stablemtl-tiny"
    pipe.save_pretrained(folder)
    return folder


def _frames(count: int = 1, height: int = 37, width: int = 45, seed: int = 0) -> torch.Tensor:
    """Smooth random images ``(N, 3, H, W)`` in [0, 1]."""
    coarse = torch.rand(count, 3, 5, 6, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)


def test_every_task_has_the_contract_shape_dtype_and_range(pipe):
    image, next_image = _frames(2), _frames(2, seed=1)
    out = pipe(image, next_image=next_image, tasks=ALL_TASKS, batch_size=2, output_type="pt")
    assert list(out.predictions) == ALL_TASKS
    for task in ALL_TASKS:
        prediction = out[task]
        assert prediction is out.predictions[task]
        assert prediction.shape == (2, get_task(task).prediction_channels, 37, 45), task
        assert prediction.dtype == get_task(task).prediction_dtype, task
        assert torch.isfinite(prediction.float()).all()
    assert out.semantic.dtype == torch.int64 and 0 <= out.semantic.min() and out.semantic.max() <= 7
    for task in ("depth", "albedo", "shading"):
        assert out[task].min() >= 0 and out[task].max() <= 1
    for task in ("optical_flow", "scene_flow"):
        assert out[task].min() >= -1 and out[task].max() <= 1
    torch.testing.assert_close(out.normal.norm(dim=1), torch.ones(2, 37, 45), atol=1e-4, rtol=0)

    as_numpy = pipe(image, next_image=next_image, tasks=ALL_TASKS, batch_size=2, output_type="np")
    for task in ALL_TASKS:
        assert isinstance(as_numpy[task], np.ndarray)
        assert as_numpy[task].shape == (2, 37, 45, get_task(task).prediction_channels)
        np.testing.assert_allclose(as_numpy[task], out[task].permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert as_numpy.semantic.dtype == np.int64


def test_unrequested_tasks_are_none_and_tuple_output_follows_task_order(pipe):
    out = pipe(_frames(), tasks=["shading", "depth"], output_type="pt")
    assert out.semantic is None and out.normal is None and list(out.predictions) == ["shading", "depth"]
    shading, depth = pipe(_frames(), tasks=["shading", "depth"], output_type="pt", return_dict=False)
    assert torch.equal(shading, out.shading) and torch.equal(depth, out.depth)


def test_all_tasks_run_as_one_unet_call_one_encode_one_decode(pipe):
    calls = {"unet": [], "encoder": [], "decoder": []}
    modules = {"unet": pipe.unet, "encoder": pipe.vae.encoder, "decoder": pipe.vae.decoder}
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: calls[name].append(args[0].shape[0]))
        for name, module in modules.items()
    ]
    try:
        pipe(_frames(2), next_image=_frames(2, seed=1), tasks=ALL_TASKS, batch_size=2)
    finally:
        for handle in handles:
            handle.remove()
    # 2 images x 7 tasks in one UNet call; both frames of both images in one encoder call.
    assert calls == {"unet": [14], "encoder": [4], "decoder": [14]}

    calls = {"unet": [], "encoder": [], "decoder": []}
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: calls[name].append(args[0].shape[0]))
        for name, module in modules.items()
    ]
    try:
        pipe(
            _frames(3), tasks=["depth", "normal"], batch_size=2
        )  # no flow task: the next frame is not encoded
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"unet": [4, 2], "encoder": [2, 1], "decoder": [4, 2]}


def test_batch_equals_one_by_one(pipe):
    images, next_images = _frames(3), _frames(3, seed=1)
    tasks = ["depth", "normal", "optical_flow", "semantic"]
    batched = pipe(list(images), next_image=list(next_images), tasks=tasks, batch_size=3, output_type="pt")
    for i in range(3):
        single = pipe(images[i], next_image=next_images[i], tasks=tasks, output_type="pt")
        for task in ("depth", "normal", "optical_flow"):
            # Equal up to batched-convolution rounding (the kernels differ with the batch size).
            torch.testing.assert_close(batched[task][i : i + 1], single[task], atol=1e-4, rtol=1e-3)
        agreement = (batched.semantic[i : i + 1] == single.semantic).float().mean()
        assert agreement > 0.999  # ids can only flip on an exact tie between two palette colours


def test_odd_sizes_and_processing_resolution(pipe):
    for height, width in ((37, 45), (8, 8), (65, 17)):
        out = pipe(_frames(1, height, width), tasks=["depth", "semantic"], output_type="pt")
        assert out.depth.shape[-2:] == (height, width) and out.semantic.shape[-2:] == (height, width)
    small = pipe(_frames(), tasks=["depth", "normal"], processing_resolution=32, output_type="pt")
    assert small.depth.shape[-2:] == (37, 45)
    torch.testing.assert_close(small.normal.norm(dim=1), torch.ones(1, 37, 45), atol=1e-4, rtol=0)
    native = pipe(
        _frames(), tasks=["depth"], processing_resolution=32, match_input_resolution=False, output_type="pt"
    )
    assert native.depth.shape[-2:] == (37 * 32 // 45, 32)


def test_next_frame_reaches_flow_tasks_only_and_fallback_duplicates(pipe, caplog):
    image, other = _frames(), _frames(seed=5)
    paired = pipe(image, next_image=other, tasks=["depth", "optical_flow"], output_type="pt")
    with caplog.at_level(logging.WARNING):
        alone = pipe(image, tasks=["depth", "optical_flow"], output_type="pt")
    assert "optical_flow" in caplog.text and "next_image" in caplog.text
    duplicated = pipe(image, next_image=image, tasks=["depth", "optical_flow"], output_type="pt")
    # depth ignores the second frame (z2 = z1); equal up to batched-convolution rounding (2 frames encoded
    # in one VAE call instead of 1).
    torch.testing.assert_close(paired.depth, alone.depth, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(alone.optical_flow, duplicated.optical_flow, atol=1e-4, rtol=1e-3)  # fallback
    assert (paired.optical_flow - alone.optical_flow).abs().max() > 1e-2  # the next frame reaches the flow


def test_input_formats_give_the_same_prediction(pipe):
    rgb = (_frames()[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [H,W,3] uint8
    reference = pipe(rgb, tasks=["depth"], output_type="pt").depth
    variants = [
        Image.fromarray(rgb),
        torch.from_numpy(rgb).permute(2, 0, 1),  # uint8 CHW
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,  # float CHW
        rgb[None],  # NHWC
        rgb.astype(np.uint16) * 257,  # 16-bit
        np.concatenate([rgb, np.full_like(rgb[..., :1], 7)], -1),  # RGBA: alpha dropped
        Image.fromarray(rgb).convert("RGBA"),
    ]
    for variant in variants:
        torch.testing.assert_close(pipe(variant, tasks=["depth"], output_type="pt").depth, reference)
    grey = rgb[..., 0]
    grey_as_rgb = pipe(np.repeat(grey[..., None], 3, -1), tasks=["depth"], output_type="pt").depth
    for variant in (grey, grey[..., None], Image.fromarray(grey), torch.from_numpy(grey)):
        torch.testing.assert_close(pipe(variant, tasks=["depth"], output_type="pt").depth, grey_as_rgb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ["depht"]}, "unknown"),
        ({"tasks": []}, "at least one task"),
        ({"next_image": torch.rand(3, 36, 45)}, "next_image"),
        ({"next_image": [torch.rand(3, 37, 45)] * 2}, "next_image"),
        ({"image": torch.rand(3, 37, 45) * 2}, "must lie in \\[0, 1\\]"),
        ({"image": torch.full((3, 37, 45), float("nan"))}, "NaN"),
        ({"image": np.zeros((37, 45, 3), dtype=np.int8)}, "signed dtype"),
        ({"image": np.zeros((37, 45, 5), dtype=np.uint8)}, "5 channels"),
        ({"image": torch.zeros(3, 37, 45, dtype=torch.int32)}, "dtype"),
        ({"image": "frame.png"}, "unsupported type"),
        ({"image": [torch.rand(3, 8, 8), torch.rand(3, 16, 8)]}, "image\\[1\\]"),
        ({"output_type": "pil"}, "output_type"),
        ({"batch_size": 0}, "batch_size"),
        ({"processing_resolution": 30}, "multiple of 8"),
        ({"resample_method_output": "lanczos"}, "resample_method_output"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(pipe, kwargs, message):
    call = {"image": torch.rand(3, 37, 45), "tasks": ["depth"], **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def test_task_without_token_and_adding_tasks(base):
    pipe = _fresh(base, tasks=["depth"], keep_text_encoder=True)
    assert pipe.tasks == ["depth"]
    with pytest.raises(ValueError, match="no task token"):
        pipe(torch.rand(3, 16, 16), tasks=["normal"])
    pipe.add_tasks("normal")
    assert pipe.tasks == ["depth", "normal"]
    expected = TaskEmbeddings.compute(pipe.text_encoder, pipe.tokenizer, {"normal": "normal"})["normal"]
    assert torch.equal(pipe.task_embeddings["normal"], expected)
    assert pipe(torch.rand(3, 16, 16), tasks=["normal"], output_type="pt").normal.shape == (1, 3, 16, 16)
    without_encoder = _fresh(base, tasks=["depth"])
    assert without_encoder.text_encoder is None
    with pytest.raises(ValueError, match="text encoder"):
        without_encoder.add_tasks("normal")


def test_save_load_round_trip_gives_identical_predictions(pipe, saved):
    files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert (
        "task_embeddings.safetensors" in files and "pipeline_stablemtl.py" in files and "README.md" in files
    )
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # atomic write left nothing
    loaded = StableMTLPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.tasks == pipe.tasks and loaded.unet.config.in_channels == 12
    image, next_image = _frames(2), _frames(2, seed=1)
    expected = pipe(image, next_image=next_image, batch_size=2, output_type="pt")
    actual = loaded(image, next_image=next_image, batch_size=2, output_type="pt")
    for task in pipe.tasks:
        assert torch.equal(actual[task], expected[task]), task
    # Saving over an existing pipeline folder writes into it.
    loaded.save_pretrained(saved)
    assert StableMTLPipeline.from_pretrained(saved).tasks == pipe.tasks


def test_plain_diffusers_loads_the_saved_folder_as_custom_pipeline(pipe, saved, tmp_path, monkeypatch):
    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved, custom_pipeline="pipeline_stablemtl")
    remote = DiffusionPipeline.from_pretrained(
        saved, custom_pipeline="pipeline_stablemtl", trust_remote_code=True
    )
    assert type(remote).__name__ == "StableMTLPipeline" and type(remote) is not StableMTLPipeline
    remote.set_progress_bar_config(disable=True)
    image = _frames()
    expected = pipe(image, tasks=["depth", "semantic"], output_type="pt")
    actual = remote(image, tasks=["depth", "semantic"], output_type="pt")
    assert torch.equal(actual.depth, expected.depth) and torch.equal(actual.semantic, expected.semantic)


def test_model_index_loads_from_the_hub_layout(saved):
    """Offline replica of diffusers' Hub download check (ecosystem.md): no custom components, no
    list-valued settings taken for components, every folder it expects present."""
    config = json.loads((saved / "model_index.json").read_text())
    files = [p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()]
    custom, folders = _get_custom_components_and_folders("someone/stablemtl-tiny", config, files)
    assert custom == {}
    assert sorted(folders) == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert config["text_encoder"] == [None, None] and config["tokenizer"] == [None, None]
    for folder in ("scheduler", "unet", "vae"):
        assert any(f.startswith(f"{folder}/") for f in files)
    assert config["timestep"] == 999 and config["input_noise"] == "deterministic"


def test_from_base_widens_conv_in_and_sets_x0_prediction(pipe, base):
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    assert pipe.unet.config.in_channels == 12 and pipe.scheduler.config.prediction_type == "sample"
    torch.testing.assert_close(pipe.unet.conv_in.weight[:, 4:8], original.conv_in.weight / 3)
    assert pipe.config.training_info == {"base_model": str(base)}
    assert pipe.task_embeddings["optical_flow"].shape == (4, 32)  # BOS, optical, flow, EOS: unpadded


def test_default_tasks_are_the_papers_seven_and_semantic_nyud_is_asked_for(pipe, base):
    assert pipe.tasks == list(PAPER_TASKS) and "semantic_nyud" in task_names()
    nyud = _fresh(base, tasks=["depth", "semantic_nyud"])
    assert nyud.tasks == ["depth", "semantic_nyud"]
    assert nyud.task_embeddings.prompts["semantic_nyud"] == "indoor semantic segmentation"
    out = nyud(_frames(2), tasks=["semantic_nyud"], batch_size=2, output_type="pt")
    ids = out.semantic_nyud
    assert ids.shape == (2, 1, 37, 45) and ids.dtype == torch.int64
    assert 0 <= ids.min() and ids.max() <= 12
    assert nyud.image_processor.visualize("semantic_nyud", ids)[0].size == (45, 37)


def test_predictor_contract(pipe, capsys):
    images, next_images = _frames(2), _frames(2, seed=1)
    pipe.set_progress_bar_config(disable=False, desc="batches")
    try:  # one batch per call: no bar of its own under the evaluator's
        result = pipe.predict(images, next_images, ["depth", "scene_flow"])
        assert "1/1" not in capsys.readouterr().err
        assert pipe._progress_bar_config == {"disable": False, "desc": "batches"}  # the caller's, kept
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert set(result) == {"depth", "scene_flow"}
    assert result["depth"].shape == (2, 1, 37, 45) and result["scene_flow"].shape == (2, 3, 37, 45)
    direct = pipe(
        images, next_image=next_images, tasks=["depth", "scene_flow"], batch_size=2, output_type="pt"
    )
    assert torch.equal(result["depth"], direct.depth)


def test_reduced_precision_paths(base):
    pipe = _fresh(base)
    reference = pipe(_frames(), tasks=["depth", "normal"], output_type="pt")
    pipe.to(torch.bfloat16)
    out = pipe(_frames(), tasks=["depth", "normal"], output_type="pt")
    assert out.depth.dtype == torch.float32 and torch.isfinite(out.depth).all()
    assert (out.depth - reference.depth).abs().mean() < 0.05
    torch.testing.assert_close(out.normal.norm(dim=1), torch.ones(1, 37, 45), atol=1e-4, rtol=0)
    # A half-precision VAE that asks for it (force_upcast) decodes in float32: its decoder is upcast once
    # and stays so, silently; the encoder keeps half precision.
    pipe.vae.to(torch.float16)
    assert pipe.vae.config.force_upcast
    latents = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = pipe.latent_step.decode(latents)
        again = pipe.latent_step.decode(latents)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, again)
    assert pipe.vae.encoder.conv_in.weight.dtype == torch.float16
    assert pipe.vae.decoder.conv_in.weight.dtype == torch.float32
    half = pipe(_frames(), tasks=["depth"], output_type="pt").depth
    assert torch.isfinite(half).all() and (half - reference.depth).abs().mean() < 0.05


def test_random_input_noise_uses_the_generator(base):
    pipe = _fresh(base, tasks=["depth"])
    deterministic = pipe(_frames(), output_type="pt").depth
    pipe.register_to_config(input_noise="random")
    first = pipe(_frames(), output_type="pt", generator=torch.Generator().manual_seed(3)).depth
    again = pipe(_frames(), output_type="pt", generator=torch.Generator().manual_seed(3)).depth
    assert torch.equal(first, again) and not torch.equal(first, deterministic)


def test_visualisers_draw_every_task(pipe):
    out = pipe(_frames(2), next_image=_frames(2, seed=1), tasks=ALL_TASKS, batch_size=2)
    for task in ALL_TASKS:
        images = pipe.image_processor.visualize(task, out[task])
        assert len(images) == 2 and images[0].size == (45, 37) and images[0].mode == "RGB", task
    assert pipe.image_processor.visualize_depth(out.depth)[0].size == (45, 37)  # Marigold's, inherited
    palette = np.array(pipe.image_processor.visualize("semantic", out.semantic)[0])
    assert palette.shape == (37, 45, 3)


def test_model_card_and_push_to_hub(pipe, tmp_path, monkeypatch):
    card = make_model_card(
        ["depth", "semantic"],
        training_info={
            "base_model": "stabilityai/stable-diffusion-2",
            "max_train_steps": 20000,
            "metrics": {"depth": {"abs_rel": 0.1234}, "semantic": {"miou": 0.5}},
        },
        repo_id="me/stablemtl",
    )
    text = str(card)
    assert "license: openrail++" in text and "base_model: stabilityai/stable-diffusion-2" in text
    assert "| depth | abs_rel | 0.1234 |" in text and "max train steps: 20000" in text
    assert 'StableMTLPipeline.from_pretrained("me/stablemtl")' in text and "affine-invariant" in text

    import stablemtl.hub as hub

    uploads = []

    def fake_upload(repo_id, folder_path, **kwargs):
        uploads.append((repo_id, sorted(os.listdir(folder_path)), open(f"{folder_path}/README.md").read()))
        return "https://huggingface.co/me/tiny/commit/0"

    class Repo:
        repo_id = "me/tiny"

    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kwargs: Repo())
    monkeypatch.setattr(hub, "upload_folder", fake_upload)
    assert pipe.push_to_hub("me/tiny").endswith("/commit/0")
    (repo_id, files, readme) = uploads[0]
    assert repo_id == "me/tiny"
    assert {"model_index.json", "task_embeddings.safetensors", "pipeline_stablemtl.py", "unet", "vae"} <= set(
        files
    )
    assert 'from_pretrained("me/tiny")' in readme


def test_failed_save_leaves_the_previous_folder_intact(base, tmp_path, monkeypatch):
    pipe = _fresh(base, tasks=["depth"])
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))

    def broken_save(directory):
        raise OSError("disk full")

    monkeypatch.setattr(pipe.task_embeddings, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pipe.save_pretrained(folder)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert StableMTLPipeline.from_pretrained(folder).tasks == ["depth"]


def test_a_saved_folder_is_as_readable_as_a_plain_folder(base, tmp_path):
    # Saving stages in a private temporary folder; the folder and files that appear must not stay private.
    import stat

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain.txt").write_text("x")
    folder = tmp_path / "model"
    _fresh(base, tasks=["depth"]).save_pretrained(folder)
    assert mode(folder) == mode(tmp_path / "plain")
    for path in folder.rglob("*"):
        assert mode(path) == mode(tmp_path / ("plain" if path.is_dir() else "plain.txt")), path


def test_from_pretrained_with_a_hub_id_reads_the_hub_cache(pipe, saved, tmp_path):
    """A Hub id resolves through huggingface_hub's cache (filled here by hand, read with local_files_only)."""
    import shutil

    repo, commit = tmp_path / "hub" / "models--someone--stablemtl-tiny", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(saved, repo / "snapshots" / commit)
    loaded = StableMTLPipeline.from_pretrained(
        "someone/stablemtl-tiny", cache_dir=tmp_path / "hub", local_files_only=True
    )
    assert loaded.tasks == pipe.tasks and loaded.name_or_path == "someone/stablemtl-tiny"
    for task in pipe.tasks:
        assert torch.equal(loaded.task_embeddings[task], pipe.task_embeddings[task])


def test_device_and_dtype_shortcuts_agree_with_diffusers(base):
    from stablemtl.pipelines.pipeline_stablemtl import _input_dtype

    pipe = _fresh(base, tasks=["depth"])
    assert pipe._execution_device == DiffusionPipeline._execution_device.fget(pipe) == torch.device("cpu")
    assert _input_dtype(pipe.unet, "conv_in") == pipe.unet.dtype == torch.float32
    assert _input_dtype(pipe.vae, "encoder.conv_in") == pipe.vae.dtype == torch.float32
    assert _input_dtype(pipe.vae, "no.such.layer") == pipe.vae.dtype  # falls back to diffusers' lookup
    reference = pipe(_frames(), output_type="pt").depth
    # Weights stored in bfloat16 but computed in float32: the inputs must be float32, as diffusers says.
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
    assert _input_dtype(pipe.unet, "conv_in") == pipe.unet.dtype == torch.float32
    cast = pipe(_frames(), output_type="pt").depth
    assert cast.dtype == torch.float32 and (cast - reference).abs().mean() < 0.05
    # With an offload hook on a component, the device comes from diffusers' own hook search.
    pipe.vae.enable_group_offload(onload_device=torch.device("cpu"), offload_type="leaf_level")
    assert pipe._execution_device == torch.device("cpu")
    torch.testing.assert_close(pipe(_frames(), output_type="pt").depth, cast)


def test_resized_predictions_decode_each_image_once_and_the_bar_shows_progress(pipe, monkeypatch, capsys):
    from stablemtl.tasks import get_task

    sizes = []
    for task in ("normal", "semantic"):
        decoder = get_task(task)
        monkeypatch.setattr(
            decoder, "decode", lambda x, f=decoder.decode, t=task: sizes.append((t, *x.shape[-2:])) or f(x)
        )
    pipe.set_progress_bar_config(disable=False)
    try:
        out = pipe(_frames(2), tasks=["normal", "semantic"], processing_resolution=32, batch_size=1)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "2/2" in capsys.readouterr().err
    assert out.normal.shape == (2, 37, 45, 3) and out.semantic.shape == (2, 37, 45, 1)
    # normal: one decode at the input size (after resizing the image); semantic (discrete, as the task
    # declares): one decode at the processing size, then the ids are resized by nearest neighbour.
    assert sizes == [("normal", 37, 45), ("semantic", 26, 32)]


def test_second_frame_zero_feeds_zeros_to_tasks_without_a_frame_pair(base):
    from stablemtl.tasks import get_task

    pipe = _fresh(base, tasks=["depth", "optical_flow"])
    pipe.register_to_config(second_frame="zero")
    image = _frames(1, 32, 32)
    out = pipe(image, tasks=["depth", "optical_flow"], output_type="pt")  # no next_image: flow falls back too
    with torch.no_grad():
        z1 = pipe.latent_step.encode(image * 2 - 1)
        for task in ("depth", "optical_flow"):
            condition, _ = pipe.task_embeddings.batch([task])
            sample = torch.cat([z1, torch.zeros_like(z1), torch.zeros_like(z1)], dim=1)
            x0 = pipe.unet(sample, torch.tensor([999]), encoder_hidden_states=condition).sample
            expected = get_task(task).decode(pipe.latent_step.decode(x0))
            torch.testing.assert_close(out.predictions[task], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="second_frame"):
        StableMTLPipeline(pipe.unet, pipe.vae, pipe.scheduler, second_frame="blank")
