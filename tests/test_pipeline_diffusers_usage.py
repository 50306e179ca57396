"""StableMTLPipeline used as a diffusers user would: plain-diffusers Hub loading with cache_dir/revision,
components/from_pipe, positional outputs, per-image generators, saving into a used folder, 16-bit PNGs,
bounded processing resolution."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders
from PIL import Image

from stablemtl import StableMTLPipeline
from stablemtl.testing import make_tiny_sd_folder


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
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
    return _fresh(base, tasks=["depth", "normal", "semantic", "shading"])


def _frames(count: int = 1, height: int = 24, width: int = 32, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(count, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)


def _files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_plain_diffusers_from_a_hub_cache_carries_cache_dir_and_revision(pipe, base, tmp_path, monkeypatch):
    """Two revisions in a hand-filled cache outside the default one: the lazily read task tokens must come
    from the revision and cache the user asked for."""
    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    repo = tmp_path / "hub" / "models--someone--stablemtl-tiny"
    (repo / "refs").mkdir(parents=True)
    for ref, commit, model in (("main", "a" * 40, _fresh(base, tasks=["depth"])), ("v1", "b" * 40, pipe)):
        model.save_pretrained(tmp_path / ref)
        shutil.copytree(tmp_path / ref, repo / "snapshots" / commit)
        (repo / "refs" / ref).write_text(commit)
    loaded = DiffusionPipeline.from_pretrained(
        "someone/stablemtl-tiny",
        custom_pipeline="pipeline_stablemtl",
        trust_remote_code=True,
        cache_dir=tmp_path / "hub",
        revision="v1",
    )
    assert loaded.tasks == pipe.tasks
    assert "task_embeddings" in loaded.components
    loaded.set_progress_bar_config(disable=True)
    image = _frames()
    expected = pipe(image, tasks=["normal"], output_type="pt").normal
    assert torch.equal(loaded(image, tasks=["normal"], output_type="pt").normal, expected)


def test_task_tokens_missing_from_the_snapshot_are_fetched_into_the_same_cache_and_commit(
    pipe, tmp_path, monkeypatch
):
    """diffusers downloads only what its patterns name; the task tokens then come from the same cache at
    the snapshot's commit (recorded here instead of a network call)."""
    import diffusers.utils.dynamic_modules_utils as dynamic
    import huggingface_hub

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    pipe.save_pretrained(tmp_path / "saved")
    repo, commit = tmp_path / "hub" / "models--someone--partial", "d" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tmp_path / "saved", repo / "snapshots" / commit)
    (repo / "snapshots" / commit / "task_embeddings.safetensors").unlink()
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tmp_path / "saved" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = DiffusionPipeline.from_pretrained(
        "someone/partial",
        custom_pipeline="pipeline_stablemtl",
        trust_remote_code=True,
        cache_dir=tmp_path / "hub",
    )
    assert loaded.tasks == pipe.tasks
    assert calls == [
        (
            "someone/partial",
            "task_embeddings.safetensors",
            {"cache_dir": tmp_path / "hub", "revision": commit},
        )
    ]


def test_positional_access_follows_the_requested_task_order(pipe):
    tasks = ["shading", "semantic", "depth"]
    out = pipe(_frames(), tasks=tasks, output_type="pt")
    as_tuple = pipe(_frames(), tasks=tasks, output_type="pt", return_dict=False)
    assert list(out.keys()) == tasks and list(out.predictions) == tasks
    assert len(out.to_tuple()) == len(as_tuple) == 3
    for index, task in enumerate(tasks):
        assert torch.equal(out[index], as_tuple[index]) and torch.equal(out[index], out[task])
        assert out.to_tuple()[index] is out[task]
    assert out.normal is None and "normal" not in out


def test_components_and_from_pipe_carry_the_task_embeddings(pipe, tmp_path):
    assert pipe.components["task_embeddings"] is pipe.task_embeddings
    image = _frames()
    expected = pipe(image, tasks=["depth", "semantic"], output_type="pt")
    rebuilt = StableMTLPipeline(**pipe.components, **pipe.parameters)
    piped = StableMTLPipeline.from_pipe(pipe)
    for copy in (rebuilt, piped):
        copy.set_progress_bar_config(disable=True)
        assert copy.tasks == pipe.tasks
        out = copy(image, tasks=["depth", "semantic"], output_type="pt")
        assert torch.equal(out.depth, expected.depth) and torch.equal(out.semantic, expected.semantic)
    # The folder saved from the rebuilt pipeline still loads from the Hub: no custom component entry.
    piped.save_pretrained(tmp_path / "piped")
    config = json.loads((tmp_path / "piped" / "model_index.json").read_text())
    assert "task_embeddings" not in config
    custom, folders = _get_custom_components_and_folders("me/piped", config, _files(tmp_path / "piped"))
    assert custom == {} and sorted(folders) == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert StableMTLPipeline.from_pretrained(tmp_path / "piped").tasks == pipe.tasks
    # Without task tokens the pipeline still moves and reports its device like any diffusers pipeline; using
    # it names what is missing.
    bare = StableMTLPipeline(pipe.unet, pipe.vae, pipe.scheduler).to("cpu")
    assert bare.task_embeddings is None and bare.components["task_embeddings"] is None
    assert bare.device.type == "cpu"
    for use in (lambda: bare.tasks, lambda: bare(image), lambda: bare.save_pretrained(tmp_path / "bare")):
        with pytest.raises(ValueError, match="no task embeddings"):
            use()
    assert not (tmp_path / "bare").exists()
    with pytest.raises(ValueError, match="TaskEmbeddings"):
        StableMTLPipeline(pipe.unet, pipe.vae, pipe.scheduler, task_embeddings={"depth": torch.zeros(3, 32)})


def test_a_list_of_generators_gives_each_image_its_own_noise(base):
    pipe = _fresh(base, tasks=["depth", "normal"])
    pipe.register_to_config(input_noise="random")
    images = _frames(3)
    batched = pipe(
        images,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)],
        batch_size=2,
        output_type="pt",
    )
    for i, seed in enumerate((1, 2, 3)):
        single = pipe(images[i], generator=torch.Generator().manual_seed(seed), output_type="pt")
        for task in ("depth", "normal"):
            torch.testing.assert_close(batched[task][i : i + 1], single[task], atol=1e-4, rtol=1e-3)
    twice = torch.cat([images[:1], images[:1]])
    seeded = pipe(twice, generator=[torch.Generator().manual_seed(1) for _ in range(2)], output_type="pt")
    torch.testing.assert_close(seeded.depth[0], seeded.depth[1], atol=1e-4, rtol=1e-3)
    shared = pipe(twice, generator=[torch.Generator().manual_seed(1)] * 2, output_type="pt")
    assert (shared.depth[0] - shared.depth[1]).abs().max() > 1e-3  # one generator object advances
    with pytest.raises(ValueError, match="list of 3"):
        pipe(images, generator=[torch.Generator()] * 2)
    with pytest.raises(ValueError, match="generator"):
        pipe(images, generator=[torch.Generator(), torch.Generator(), 7])


def test_save_pretrained_keeps_the_users_other_files(pipe, tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoint-100").mkdir(parents=True)
    (folder / "checkpoint-100" / "model.safetensors").write_bytes(b"weights")
    (folder / "notes.txt").write_text("my notes")
    pipe.save_pretrained(folder)
    pipe.save_pretrained(folder)  # again, over the saved pipeline
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "checkpoint-100" / "model.safetensors").read_bytes() == b"weights"
    assert StableMTLPipeline.from_pretrained(folder).tasks == pipe.tasks
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # A weight file of an earlier save that the new one supersedes (here a stale shard) is removed,
    # other variants' weights are kept.
    (folder / "unet" / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(b"old shard")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"fp16 weights")
    pipe.save_pretrained(folder)
    unet_files = sorted(p.name for p in (folder / "unet").iterdir())
    assert unet_files == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"
    ]  # fmt: skip


def test_save_pretrained_refuses_a_file_and_an_interrupted_save_looks_incomplete(pipe, tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"not a folder")
    with pytest.raises(ValueError, match="existing file"):
        pipe.save_pretrained(target)
    assert target.read_bytes() == b"not a folder" and [p.name for p in tmp_path.iterdir()] == [target.name]

    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    (folder / "notes.txt").write_text("keep")
    import stablemtl.pipelines.folder_io as folder_io

    real_replace, moved = folder_io.os.replace, []

    def crash_after_three(src, dst):
        if len(moved) == 3:
            raise KeyboardInterrupt
        moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(folder_io.os, "replace", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        pipe.save_pretrained(folder)
    monkeypatch.undo()
    assert not (folder / "model_index.json").exists()  # never looks complete half-way
    assert (folder / "notes.txt").read_text() == "keep"
    with pytest.raises(Exception):  # noqa: B017 - diffusers' own error for a folder without an index
        StableMTLPipeline.from_pretrained(folder)
    pipe.save_pretrained(folder)
    assert StableMTLPipeline.from_pretrained(folder).tasks == pipe.tasks


def test_safe_serialization_false_warns_and_writes_safetensors(pipe, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        pipe.save_pretrained(tmp_path / "model", safe_serialization=False)
    assert "safe_serialization=False ignored" in caplog.text
    files = _files(tmp_path / "model")
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]


def test_depth_exports_to_16bit_png_that_reads_back(pipe, tmp_path):
    depth = pipe(_frames(2), tasks=["depth"], batch_size=2).depth  # (2,H,W,1) float in [0,1]
    for source in (depth, torch.from_numpy(depth).permute(0, 3, 1, 2), list(depth[..., 0])):
        images = pipe.image_processor.export_depth_to_16bit_png(source)
        assert len(images) == 2
        images[1].save(tmp_path / "depth.png")
        with Image.open(tmp_path / "depth.png") as png:
            assert png.mode == "I;16"
            values = np.array(png)
        assert values.dtype == np.uint16 and values.shape == depth.shape[1:3]
        np.testing.assert_array_equal(values, np.round(depth[1, ..., 0].astype(np.float64) * 65535))
    scaled = np.array(pipe.image_processor.export_depth_to_16bit_png(depth * 10, val_max=10.0)[0])
    assert np.abs(scaled.astype(int) - np.round(depth[0, ..., 0] * 65535)).max() <= 1
    with pytest.raises(ValueError, match="NaN"):
        pipe.image_processor.export_depth_to_16bit_png(np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        pipe.image_processor.export_depth_to_16bit_png(np.zeros((1, 4, 4, 1), dtype=np.uint8))


def test_processing_resolution_is_bounded_by_the_training_resolution(base):
    pipe = _fresh(base, tasks=["depth"])
    with pytest.raises(ValueError, match="exceeds the limit of 4096"):
        pipe(_frames(), processing_resolution=65536)
    pipe.register_to_config(default_processing_resolution=16)
    assert pipe.max_processing_resolution() == 64
    with pytest.raises(ValueError, match="max_processing_resolution"):
        pipe(_frames(), processing_resolution=72)
    out = pipe(_frames(), processing_resolution=72, max_processing_resolution=72, output_type="pt")
    assert out.depth.shape == (1, 1, 24, 32)
    assert pipe(_frames(), output_type="pt").depth.shape == (1, 1, 24, 32)  # the default: 16 px
    with pytest.raises(ValueError, match="max_processing_resolution"):
        pipe(_frames(), max_processing_resolution=0)
