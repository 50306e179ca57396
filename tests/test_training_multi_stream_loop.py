"""Stage 2 through the shared loop: a tiny run from a stage-1 folder saves a multi-stream pipeline."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from stablemtl import StableMTLPipeline
from stablemtl.data import make_dataset
from stablemtl.pipelines.pipeline_stablemtl_multistream import StableMTLMultiStreamPipeline
from stablemtl.testing import make_tiny_sd_folder
from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.loop import train
from stablemtl.training.objectives.multi_stream import MultiStreamConfig, stage2_objective


@pytest.fixture(autouse=True)
def _offline_and_fresh_accelerate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_a_tiny_stage2_run_trains_the_task_attention_and_saves_the_pipeline(tmp_path):
    base = make_tiny_sd_folder(tmp_path / "tiny-sd")
    StableMTLPipeline.from_base(base).save_pretrained(tmp_path / "s1")
    data = make_dataset("indoor", 8, tmp_path / "data", size=32, seed=1)
    flags = [
        "--stage1_model", str(tmp_path / "s1"), "--train_data", str(data),
        "--output_dir", str(tmp_path / "s2"), "--train_batch_size", "2", "--max_train_steps", "3",
        "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
        "--report_to", "none", "--validation_steps", "3", "--num_validation_images", "2",
        "--task_attention_hidden_dim", "16", "--train_only_task_attention", "--seed", "3",
    ]  # fmt: skip
    train_config, model_config = parse_configs(flags, TrainConfig, MultiStreamConfig)
    out = train(train_config, lambda tasks, config, res: stage2_objective(tasks, config, res, model_config))
    pipe = StableMTLMultiStreamPipeline.from_pretrained(out)
    weights = [layer.to_out_task.weight for layer in pipe.task_attention.task_layers.values()]
    assert any(w.abs().sum() > 0 for w in weights)  # the zero-initialised projections moved
    stage1 = StableMTLPipeline.from_pretrained(tmp_path / "s1")
    for (name, a), (_, b) in zip(pipe.unet.state_dict().items(), stage1.unet.state_dict().items()):
        assert torch.equal(a, b), name  # --train_only_task_attention: the main UNet did not move
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(pipe(image, tasks=["depth"], output_type="pt").depth).all()


def test_resume_gives_the_weights_of_an_uninterrupted_run_masking_included(tmp_path):
    base = make_tiny_sd_folder(tmp_path / "tiny-sd")
    StableMTLPipeline.from_base(base, tasks=["depth", "normal", "albedo"]).save_pretrained(tmp_path / "s1")
    data = make_dataset("indoor", 8, tmp_path / "data", size=32, seed=1)

    def run(output_dir, steps, *extra):
        flags = [
            "--stage1_model", str(tmp_path / "s1"), "--train_data", str(data),
            "--output_dir", str(output_dir), "--tasks", "depth", "normal", "albedo",
            "--train_batch_size", "2", "--max_train_steps", str(steps), "--lr_total_steps", "4",
            "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--report_to", "none",
            "--checkpointing_steps", "2", "--validation_steps", "100", "--task_attention_hidden_dim", "16",
            "--task_masking", "attn_prob", "--task_masking_ratio", "0.5", "--seed", "5", *extra,
        ]  # fmt: skip
        train_config, model_config = parse_configs(flags, TrainConfig, MultiStreamConfig)
        out = train(
            train_config, lambda tasks, config, res: stage2_objective(tasks, config, res, model_config)
        )
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return StableMTLMultiStreamPipeline.from_pretrained(out)

    run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 4, "--resume_from_checkpoint", "latest")
    straight = run(tmp_path / "straight", 4)
    for name in ("unet", "task_attention"):
        a, b = getattr(resumed, name).state_dict(), getattr(straight, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name
    assert any(
        layer.to_out_task.weight.abs().sum() > 0 for layer in straight.task_attention.task_layers.values()
    )
