"""Stage 2 with task-adaptive LoRA on the main UNet: exact start, batched routing, training, save and load."""

from __future__ import annotations

import copy

import pytest
import torch
from multistream_fixtures import frames, randomize

from stablemtl import StableMTLPipeline
from stablemtl.data import make_dataset
from stablemtl.models.lora import TaskLoRASettings
from stablemtl.pipelines.pipeline_stablemtl_multistream import StableMTLMultiStreamPipeline
from stablemtl.testing import make_tiny_sd_folder
from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.loop import train
from stablemtl.training.objectives.lora import LoRATrainConfig
from stablemtl.training.objectives.multi_stream import MultiStreamConfig, stage2_objective

TASKS = ["depth", "normal", "optical_flow"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        base = make_tiny_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)
        pipe = StableMTLPipeline.from_base(base, tasks=TASKS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_fresh_adapters_start_exactly_at_stage1_and_batched_tasks_equal_per_task_calls(stage1):
    pipe = StableMTLMultiStreamPipeline.from_stage1(copy.deepcopy(stage1), query_hidden_dim=16)
    pipe.set_progress_bar_config(disable=True)
    image, next_image = frames(), frames(seed=1)
    pipe.install_task_lora(TaskLoRASettings(rank=2, task_rank=2, tasks=TASKS, task_layers="all"))
    ours = pipe(image, next_image=next_image, tasks=TASKS, batch_size=2, output_type="pt")
    pipe.unet.disable_adapters()
    without = pipe(image, next_image=next_image, tasks=TASKS, batch_size=2, output_type="pt")
    pipe.unet.enable_adapters()
    theirs = stage1(image, next_image=next_image, tasks=TASKS, batch_size=2, output_type="pt")
    for task in TASKS:
        assert torch.equal(ours[task], without[task]), task  # zero lora_B, zero gates: add exactly 0
        # Against stage 1: the same model, batched in another order (float reassociation only).
        torch.testing.assert_close(ours[task], theirs[task], atol=1e-4, rtol=1e-4)

    # Non-zero adapters, gates and task attention: each task's rows of the one batched main call use that
    # task's adapter, exactly as a call for that task alone does.
    randomize(pipe.task_lora.adapter_parameters(), seed=3, scale=0.05)
    randomize(pipe.task_attention, seed=4, scale=0.2)
    together = pipe(image, next_image=next_image, tasks=TASKS, batch_size=2, output_type="pt")
    for task in TASKS:
        alone = pipe(image, next_image=next_image, tasks=[task], batch_size=2, output_type="pt")
        # Normals are normalised after decoding, which magnifies float noise where the raw vector is short.
        tolerance = 1e-3 if task == "normal" else 1e-5
        torch.testing.assert_close(together[task], alone[task], atol=tolerance, rtol=1e-5)
    assert (together.depth - theirs.depth).abs().max() > 1e-3  # the adapters act
    # The routing really differs per task: depth routed through normal's adapter predicts otherwise.
    with pipe.task_lora.routing(["normal"] * 2):
        output = pipe.multistream(
            {t: torch.zeros(2, 12, 4, 4) for t in TASKS}, ["depth"], pipe._require_task_embeddings()
        )
    with pipe.task_lora.routing(["depth"] * 2):
        expected = pipe.multistream(
            {t: torch.zeros(2, 12, 4, 4) for t in TASKS}, ["depth"], pipe._require_task_embeddings()
        )
    assert (output.main["depth"] - expected.main["depth"]).abs().max() > 1e-4
    # Published alone, the adapters' card says which pipeline class they belong to.
    assert "StableMTLMultiStreamPipeline.from_pretrained(" in pipe.lora_model_card().content


def test_a_stage1_model_with_adapters_cannot_be_the_auxiliary_stream(stage1):
    pipe = copy.deepcopy(stage1)
    pipe.install_task_lora(TaskLoRASettings(rank=2, task_rank=2, tasks=TASKS))
    with pytest.raises(ValueError, match="auxiliary stream"):
        StableMTLMultiStreamPipeline.from_stage1(pipe, query_hidden_dim=16)


@pytest.fixture
def stage1_folder(stage1, tmp_path):
    stage1.save_pretrained(tmp_path / "s1")
    return tmp_path / "s1"


def _flags(stage1_folder, data, output_dir, *extra):
    return [
        "--stage1_model", str(stage1_folder), "--train_data", str(data), "--output_dir", str(output_dir),
        "--tasks", *TASKS, "--train_batch_size", "2", "--max_train_steps", "4", "--learning_rate", "1e-2",
        "--lr_warmup_steps", "0", "--report_to", "none", "--validation_steps", "4",
        "--num_validation_images", "2", "--task_attention_hidden_dim", "16", "--seed", "3", *extra,
    ]  # fmt: skip


def test_lora_stage2_trains_adapters_and_task_attention_only_and_reloads_as_trained(
    stage1_folder, tmp_path, fresh_accelerate
):
    data = make_dataset("street", 6, tmp_path / "data", size=32, seed=1)
    snapshots = []

    def audit(step, groups, stepped, modules):
        model = modules["multistream"]
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})

    configs = parse_configs(
        _flags(stage1_folder, data, tmp_path / "s2", "--lora_rank", "2", "--lora_task_rank", "2"),
        TrainConfig, MultiStreamConfig, LoRATrainConfig,
    )  # fmt: skip
    train_config, model_config, lora_config = configs
    out = train(
        train_config,
        lambda tasks, config, res: stage2_objective(tasks, config, res, model_config, lora_config),
        on_micro_batch=audit,
    )
    first, last = snapshots[0], snapshots[-1]
    changed = {n for n in first if not torch.equal(first[n], last[n])}
    assert any(n.startswith("task_attention.") for n in changed)
    assert any(".shared." in n for n in changed) and any("ta_lora_gates" in n for n in changed)
    moved_unet = [n for n in changed if n.startswith("unet.") and "lora_" not in n and "ta_lora" not in n]
    assert not moved_unet, moved_unet[:3]  # the main UNet's own weights stay frozen
    assert not any(n.startswith("aux_unet.") for n in changed)  # the auxiliary stream stays frozen

    # The folder: the multi-stream pipeline with the frozen main UNet, plus the main UNet's adapters.
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    pipe = StableMTLMultiStreamPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    saved_unet = StableMTLPipeline.from_pretrained(stage1_folder).unet.state_dict()
    assert pipe.task_lora is not None and pipe.task_lora.settings.tasks == TASKS
    image = frames(1)
    trained = pipe(image, tasks=["depth", "normal"], output_type="pt")
    pipe.unload_lora_weights()
    assert all(torch.equal(v, saved_unet[k]) for k, v in pipe.unet.state_dict().items())
    without = pipe(image, tasks=["depth", "normal"], output_type="pt")
    assert (trained.depth - without.depth).abs().max() > 1e-4  # the adapters were saved and reloaded


def test_lora_and_task_attention_only_exclude_each_other(stage1_folder, tmp_path, fresh_accelerate):
    data = make_dataset("street", 2, tmp_path / "data", size=32, seed=1)
    flags = _flags(stage1_folder, data, tmp_path / "s2", "--lora_rank", "2", "--train_only_task_attention")
    train_config, model_config, lora_config = parse_configs(
        flags, TrainConfig, MultiStreamConfig, LoRATrainConfig
    )
    with pytest.raises(ValueError, match="choose one"):
        stage2_objective(TASKS, train_config, 32, model_config, lora_config)
