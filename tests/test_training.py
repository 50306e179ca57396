"""Stage-1 training end to end on CPU: task isolation, the saved pipeline, DDP lockstep, kill -9 and resume.

Tiny SD-layout base (stablemtl.testing) and tiny synthetic sources at 32 px, so each run takes seconds.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from stablemtl.data import make_dataset
from stablemtl.pipelines import StableMTLPipeline
from stablemtl.testing import make_tiny_sd_folder
from stablemtl.training import load_config, train

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "training_worker.py"
OFFICIAL_ORDER = ["albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    # One thread: on a shared 2-core machine, two OpenMP threads per process are up to 50x slower on
    # these tiny tensors. Subprocesses get the same count (see _run_worker).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("training")
    base = make_tiny_sd_folder(root / "tiny-sd")
    data = [make_dataset(p, 8, root / "data" / p, size=32, seed=1) for p in ("indoor", "street", "flying")]
    yield {"base": base, "data": data, "root": root}
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline_and_fresh_accelerate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    AcceleratorState._reset_state(True)  # the in-process runs share accelerate's singletons
    GradientState._reset_state()


def _settings(assets, output_dir: Path, **overrides) -> dict:
    settings = {
        "pretrained_model_name_or_path": str(assets["base"]),
        "train_data": [str(p) for p in assets["data"]],
        "output_dir": str(output_dir),
        "train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "lr_warmup_steps": 0,  # with a warm-up the first update has lr 0 and moves nothing
        "report_to": "none",
        "num_validation_images": 2,
        "seed": 3,
    }
    settings.update(overrides)
    return settings


def _flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flags.append(f"--{key}")
        flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_a_tiny_run_updates_on_one_task_at_a_time_and_saves_a_pipeline(assets, tmp_path):
    from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline

    records = []

    def hook(step, groups, sync, modules):
        unet = modules["unet"]
        checksum = float(unet.conv_in.weight.detach().double().sum())
        records.append((step, [g["task"] for g in groups], [g["source"] for g in groups], sync, checksum))

    config = load_config(
        None, **_settings(assets, tmp_path, max_train_steps=7, validation_steps=7, report_to="tensorboard")
    )
    out = train(config, on_micro_batch=hook)

    # Every window of 2 micro-batches holds one task and one source per micro-batch; the optimizer steps
    # only on the second; steps cycle through the tasks in the official order.
    assert len(records) == 14
    for step in range(7):
        (s0, tasks0, sources0, sync0, w0), (s1, tasks1, sources1, sync1, w1) = records[
            2 * step : 2 * step + 2
        ]
        assert s0 == s1 == step and (sync0, sync1) == (False, True)
        assert tasks0 == tasks1 == [OFFICIAL_ORDER[step]]
        assert len(set(sources0[0])) == len(set(sources1[0])) == 1
        # The weights seen after the first micro-batch are those the previous update left: nothing moved
        # mid-window, so each update is the gradient of this window's task alone.
        previous = records[2 * step - 1][4] if step else None
        if previous is not None:
            assert w0 == previous
        assert w1 != w0

    # The output folder is a pipeline that loads and predicts every trained task.
    pipe = StableMTLPipeline.from_pretrained(out)
    assert pipe.tasks == OFFICIAL_ORDER
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prediction = pipe.predict(image, image, ["depth", "optical_flow"])
    assert prediction["depth"].shape == (1, 1, 32, 32) and prediction["optical_flow"].shape == (1, 2, 32, 32)
    trained, saved_conv = _unet_weights(out), pipe.unet.conv_in.weight
    assert torch.equal(trained["conv_in.weight"], saved_conv)
    assert float(saved_conv.detach().double().sum()) == pytest.approx(records[-1][4], abs=1e-9)
    assert (out / "checkpoint-7" / "model.safetensors").is_file()
    assert (out / "validation" / "step-0000007.png").is_file()
    assert json.loads((out / "training_config.json").read_text())["max_train_steps"] == 7
    card = (out / "README.md").read_text()
    assert "max train steps: 7" in card and str(assets["data"][0]) in card

    # The tracker got one loss per task (at the step that trained it), the LR of the official schedule
    # (peak 1e-3, no warm-up, decay to 1 % over the 7 steps), the grad norm, samples/s and validation.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The run's own event file (accelerate writes the hyper-parameters to a second one in a subfolder).
    (events,) = (out / "logs" / "stablemtl").glob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload()
    tags = scalars.Tags()["scalars"]
    for step, task in enumerate(OFFICIAL_ORDER, start=1):
        (loss,) = scalars.Scalars(f"loss/{task}")
        assert loss.step == step and 0 < loss.value < 10
        assert f"val_loss/{task}" in tags
    lr = {e.step: e.value for e in scalars.Scalars("lr")}
    assert lr[1] == pytest.approx(1e-3 * 0.01 ** (1 / 7), rel=1e-5) and lr[7] == pytest.approx(1e-5, rel=1e-5)
    assert [e.step for e in scalars.Scalars("grad_norm")] == list(range(1, 8))
    assert all(e.value > 0 for e in scalars.Scalars("grad_norm") + scalars.Scalars("samples_per_second"))
    assert [e.step for e in scalars.Images("validation")] == [7]


def test_joint_grouping_mixes_tasks_in_a_micro_batch(assets, tmp_path):
    seen = []
    settings = _settings(assets, tmp_path, max_train_steps=3, task_grouping="joint", train_batch_size=4)
    config = load_config(None, **{**settings, "gradient_accumulation_steps": 1})
    train(config, on_micro_batch=lambda step, groups, sync, unet: seen.append([g["task"] for g in groups]))
    assert len(seen) == 3 and any(len(tasks) > 1 for tasks in seen)


def _run_worker(args: list[str], record: Path, torchrun: bool = False, stage: int = 1) -> subprocess.Popen:
    # Same thread count as this process: CPU kernels reduce in a thread-dependent order, and the resume
    # test compares a run split across processes with one in this process bit for bit.
    env = {
        **os.environ,
        "STABLEMTL_RECORD": str(record),
        "HF_HUB_OFFLINE": "1",
        "STABLEMTL_STAGE": str(stage),
    }
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    command = [sys.executable]
    if torchrun:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    return subprocess.Popen(
        [*command, str(WORKER), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _read(record: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_the_same_task_on_different_samples_and_end_identical(assets, tmp_path):
    record = tmp_path / "record"
    settings = _settings(assets, tmp_path / "out", max_train_steps=4, train_batch_size=1)
    process = _run_worker(_flags(settings), record, torchrun=True)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode()[-3000:]
    rank0, rank1 = _read(record, 0), _read(record, 1)
    assert len(rank0) == len(rank1) == 8
    for a, b in zip(rank0, rank1):
        assert (a["step"], a["sync"], a["tasks"], a["sources"]) == (
            b["step"],
            b["sync"],
            b["tasks"],
            b["sources"],
        )
        assert a["tasks"] == [OFFICIAL_ORDER[a["step"]]]
    images0 = [x for line in rank0 for x in line["images"]]
    images1 = [x for line in rank1 for x in line["images"]]
    assert images0 != images1  # each rank reads its own shard
    weights0, weights1 = (
        load_file(str(record / "rank0.safetensors")),
        load_file(str(record / "rank1.safetensors")),
    )
    assert weights0.keys() == weights1.keys()
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)
    assert torch.equal(weights0["conv_in.weight"], _unet_weights(tmp_path / "out")["conv_in.weight"])


def test_two_processes_train_stage2_with_lora_in_lockstep_and_end_identical(assets, tmp_path):
    # Stage 2 under DDP: one wrapped two-stream module whose micro-batches leave the other tasks' query
    # MLPs and LoRA adapters without gradient (find_unused_parameters), on two gloo ranks.
    tasks = ["depth", "normal", "albedo"]
    StableMTLPipeline.from_base(assets["base"], tasks=tasks).save_pretrained(tmp_path / "s1")
    settings = _settings(assets, tmp_path / "out", max_train_steps=3, train_batch_size=1, tasks=tasks)
    del settings["pretrained_model_name_or_path"]
    settings.update(stage1_model=str(tmp_path / "s1"), task_attention_hidden_dim=16, lora_rank=2)
    record = tmp_path / "record"
    process = _run_worker(_flags(settings), record, torchrun=True, stage=2)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode()[-3000:]
    rank0, rank1 = _read(record, 0), _read(record, 1)
    assert [(a["step"], a["tasks"]) for a in rank0] == [(b["step"], b["tasks"]) for b in rank1]
    assert [x for line in rank0 for x in line["images"]] != [x for line in rank1 for x in line["images"]]
    weights0, weights1 = (load_file(str(record / f"rank{r}.safetensors")) for r in (0, 1))
    assert weights0.keys() == weights1.keys()
    assert any(k.startswith("task_attention.") for k in weights0) and any("lora_" in k for k in weights0)
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)
    moved = [k for k in weights0 if "to_out_task" in k and weights0[k].abs().sum() > 0]
    assert moved  # the zero-initialised task attention trained, identically on both ranks
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_kill_9_then_resume_latest_gives_the_weights_of_an_uninterrupted_run(assets, tmp_path):
    common = {"max_train_steps": 6, "checkpointing_steps": 2, "checkpoints_total_limit": 1}
    killed = tmp_path / "killed"
    process = _run_worker(_flags(_settings(assets, killed, **common)), tmp_path / "record")
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint-2").is_dir():
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert not (killed / "model_index.json").exists(), "the run finished before it could be killed"

    train(load_config(None, **_settings(assets, killed, resume_from_checkpoint="latest", **common)))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    straight = train(load_config(None, **_settings(assets, tmp_path / "straight", **common)))

    resumed, uninterrupted = _unet_weights(killed), _unet_weights(straight)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert [p.name for p in killed.glob("checkpoint-*")] == ["checkpoint-6"]  # rotated, limit 1


def test_bf16_checkpointing_ema_adamw_and_adaptive_sampling_run_and_save_the_ema_weights(
    assets, tmp_path, monkeypatch
):
    last = {}

    def hook(step, groups, sync, modules):
        unet = modules["unet"]
        last["conv_in"] = unet.conv_in.weight.detach().clone()
        last["tasks"] = last.get("tasks", []) + [g["task"] for g in groups]

    settings = _settings(
        assets,
        tmp_path,
        max_train_steps=9,
        tasks=["depth", "semantic"],
        task_sampling="adaptive",
        mixed_precision="bf16",
        gradient_checkpointing=True,
        use_ema=True,
        ema_decay=0.5,
        optimizer="adamw",
        adam_weight_decay=0.01,
    )
    # oneDNN's CPU bf16 kernels (torch 2.13 on this machine) intermittently return garbage gradients
    # (~1e26, then NaN weights); the reference kernels are deterministic. CUDA runs are unaffected.
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    out = train(load_config(None, **settings), on_micro_batch=hook)
    saved = _unet_weights(out)["conv_in.weight"]
    assert saved.dtype == torch.float32 and torch.isfinite(saved).all()
    assert not torch.equal(saved, last["conv_in"])  # the EMA weights, not the raw ones, are saved
    assert (
        set(last["tasks"]) == {"depth", "semantic"} and last["tasks"][:4] == ["depth"] * 2 + ["semantic"] * 2
    )
    # The sampler and EMA states are safetensors + JSON; the only pickle is accelerate's RNG state.
    names = sorted(p.name for p in (tmp_path / "checkpoint-9").iterdir())
    assert {"sampler.safetensors", "ema.safetensors", "ema.json"} <= set(names)
    assert [n for n in names if n.endswith(".pkl")] == ["random_states_0.pkl"]
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    settings.update(use_ema=False, resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="holds an EMA state but use_ema is off"):
        train(load_config(None, **settings))


def test_unavailable_backends_fail_with_a_clear_message(assets, tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train(
            load_config(
                None,
                **_settings(
                    assets, tmp_path, max_train_steps=1, enable_xformers_memory_efficient_attention=True
                ),
            )
        )
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match="pip install bitsandbytes"):
            train(
                load_config(
                    None, **_settings(assets, tmp_path / "bnb", max_train_steps=1, use_8bit_adam=True)
                )
            )


def test_dataloader_workers_read_exactly_what_the_main_process_reads(assets, tmp_path):
    weights = []
    for workers in (0, 2):
        settings = _settings(
            assets, tmp_path / str(workers), max_train_steps=3, dataloader_num_workers=workers
        )
        weights.append(_unet_weights(train(load_config(None, **settings))))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# -- what the saved pipeline carries over from training --------------------------------------------------
@pytest.fixture(scope="module")
def mixed_run(assets, tmp_path_factory) -> Path:
    """One bf16 step at a non-default timestep and second-frame input (shared by the tests below)."""
    out = tmp_path_factory.mktemp("mixed")
    settings = _settings(
        assets, out, max_train_steps=1, tasks=["depth"], mixed_precision="bf16", timestep=500
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)  # see the bf16 test above
        patch.setenv("HF_HUB_OFFLINE", "1")
        train(load_config(None, **settings, second_frame="zero"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return out


def test_a_bf16_run_saves_the_base_vae_bit_for_bit(assets, mixed_run):
    name = "vae/diffusion_pytorch_model.safetensors"
    base, saved = load_file(str(assets["base"] / name)), load_file(str(mixed_run / name))
    assert base.keys() == saved.keys()
    assert all(saved[k].dtype == torch.float32 and torch.equal(saved[k], base[k]) for k in base)
    # The check can fail: a bf16 round trip changes the base weights.
    assert any(not torch.equal(v.bfloat16().float(), v) for v in base.values())


def test_the_saved_pipeline_predicts_as_the_objective_trained(assets, mixed_run):
    from stablemtl.data import load_source
    from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline
    from stablemtl.training.objectives.single_stream import StableMTLObjective
    from stablemtl.training.validation import validation_groups

    pipe = StableMTLPipeline.from_pretrained(mixed_run)
    assert (pipe.config.timestep, pipe.config.second_frame) == (500, "zero")
    (group,) = validation_groups([load_source(assets["data"][0])], ["depth"], 2)
    # A fresh objective reads the latent-step settings from the saved pipeline's config.
    objective = StableMTLObjective(StableMTLPipeline.from_pretrained(mixed_run))
    batch = objective.prepare([group])
    with torch.no_grad():
        trained = objective.predict_latents(pipe.unet, batch)
        condition, mask = pipe.task_embeddings.batch(["depth"])
        z1 = batch.sample[:, :4]

        def infer():
            return pipe.predict_latents(z1, z1, condition, mask, torch.tensor([False]))

        torch.testing.assert_close(infer(), trained, rtol=0, atol=1e-6)
        # Either setting left at its default would infer differently.
        pipe.register_to_config(second_frame="duplicate")
        assert (infer() - trained).abs().max() > 1e-4
        pipe.register_to_config(second_frame="zero", timestep=999)
        assert (infer() - trained).abs().max() > 1e-4


def test_a_failed_replacement_of_the_final_pipeline_leaves_no_model_index(
    assets, mixed_run, tmp_path, monkeypatch
):
    from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline
    from stablemtl.training.objectives.single_stream import StableMTLObjective

    pipe = StableMTLPipeline.from_pretrained(mixed_run)
    objective = StableMTLObjective(pipe)
    objective.save_model({"unet": pipe.unet}, tmp_path)
    assert (tmp_path / "model_index.json").is_file()

    replace, moves = os.replace, []

    def failing_replace(src, dst):
        if any(".saving-" in part for part in Path(src).parts):  # moving a staged file into the folder
            moves.append(Path(src).name)
            if len(moves) == 2:
                raise OSError("disk full")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        objective.save_model({"unet": pipe.unet}, tmp_path)
    # One component is new, the rest old: the folder must not load as a pipeline.
    assert len(moves) == 2 and not (tmp_path / "model_index.json").exists()
    monkeypatch.setattr(os, "replace", replace)
    objective.save_model({"unet": pipe.unet}, tmp_path)
    assert StableMTLPipeline.from_pretrained(tmp_path).config.timestep == 500


def test_validation_defaults_to_unaugmented_rows_the_training_sampler_never_draws(assets):
    from stablemtl.data import load_source
    from stablemtl.training.data import build_training_data
    from stablemtl.training.validation import ValidationSet

    config = load_config(None, **_settings(assets, assets["root"] / "unused", num_validation_images=2))
    assert config.augment and not config.validation_data
    validation = ValidationSet.build(config, ["depth", "optical_flow"])
    assert validation.origin == "the last 2/2/2 rows of the training sources, held out of training"
    augmented_differs = []
    for group in validation.groups:
        path = next(p for p in assets["data"] if load_source(p).source == group["source"][0])
        plain, augmented = load_source(path), load_source(path, augment=True, seed=config.seed)
        tail = range(len(plain) - 2, len(plain))  # rows 6, 7 of the 8-row sources
        assert all(torch.equal(group["image"][i], plain[r]["image"]) for i, r in enumerate(tail))
        augmented_differs += [not torch.equal(augmented[r]["image"], plain[r]["image"]) for r in tail]
    assert any(augmented_differs)  # the check can fail: the augmentation changes some of these samples
    # Many epochs of the training sampler never draw a held-out row, and do draw every other row.
    sampler, _, datasets = build_training_data(config)
    drawn = {
        (source, index) for batch in itertools.islice(iter(sampler), 200) for _, source, index, _ in batch
    }
    sizes = [len(d) for d in datasets]
    assert drawn == {(s, i) for s, n in enumerate(sizes) for i in range(n - 2)}


def test_validation_data_is_used_as_given_and_nothing_is_held_out(assets):
    from stablemtl.training.data import build_training_data
    from stablemtl.training.validation import ValidationSet

    settings = _settings(assets, assets["root"] / "unused", num_validation_images=3)
    config = load_config(None, **settings, validation_data=[str(assets["data"][1])])
    validation = ValidationSet.build(config, ["depth"])
    assert validation.origin == "held-out validation_data"
    assert [g["source"][0] for g in validation.groups] == ["street"]
    sampler, _, datasets = build_training_data(config)
    drawn = {
        (source, index) for batch in itertools.islice(iter(sampler), 200) for _, source, index, _ in batch
    }
    assert drawn == {(s, i) for s, d in enumerate(datasets) for i in range(len(d))}
