"""Stage 1 with task-adaptive LoRA through the real training loop: only adapters move, the result reloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from stablemtl.pipelines import StableMTLPipeline
from stablemtl.training import load_config
from stablemtl.training.loop import train
from stablemtl.training.objectives.lora import LoRATrainConfig, lora_objective_factory

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_accelerate")


def _config(street_assets, output_dir: Path, **overrides):
    settings = {
        "pretrained_model_name_or_path": str(street_assets["base"]),
        "train_data": [str(street_assets["data"])],
        "output_dir": str(output_dir),
        "tasks": ["depth", "normal"],
        "train_batch_size": 2,
        "max_train_steps": 4,
        "checkpointing_steps": 4,
        "validation_steps": 4,
        "lr_warmup_steps": 0,
        "learning_rate": 1e-2,
        "report_to": "none",
        "seed": 0,
    }
    settings.update(overrides)
    return load_config(None, **settings)


def test_lora_training_moves_only_adapters_and_reloads_as_trained(street_assets, tmp_path):
    snapshots: list[dict[str, torch.Tensor]] = []

    def audit(step, groups, stepped, modules):
        unet = modules["unet"]
        snapshots.append({n: p.detach().clone() for n, p in unet.named_parameters()})

    lora_config = LoRATrainConfig(lora_rank=4, lora_task_rank=2)
    output = train(
        _config(street_assets, tmp_path), lora_objective_factory(lora_config), on_micro_batch=audit
    )
    first, last = snapshots[0], snapshots[-1]
    changed = {n for n in first if not torch.equal(first[n], last[n])}
    assert changed, "nothing trained"
    assert all("lora_" in n or "ta_lora_gates" in n for n in changed), sorted(changed)[:5]
    assert any("ta_lora_gates" in n for n in changed) and any(".shared." in n for n in changed)

    # The folder: the frozen base pipeline plus a small adapter file; loading both restores the model.
    assert (output / "model_index.json").is_file() and (output / "pytorch_lora_weights.safetensors").is_file()
    adapter_bytes = (output / "pytorch_lora_weights.safetensors").stat().st_size
    unet_bytes = (output / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert adapter_bytes < 0.2 * unet_bytes
    pipe = StableMTLPipeline.from_pretrained(output)  # the folder loads with its adapters
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    adapted = pipe(image, tasks=["depth", "normal"], output_type="pt").predictions
    gates = pipe.task_lora.gates.gates
    assert all(g.abs().sum() > 0 for g in gates.values())  # both tasks' gates left zero
    pipe.unload_lora_weights()
    base = pipe(image, tasks=["depth", "normal"], output_type="pt").predictions
    assert (adapted["depth"] - base["depth"]).abs().max() > 1e-4
    pipe.load_lora_weights(output)
    again = pipe(image, tasks=["depth", "normal"], output_type="pt").predictions
    torch.testing.assert_close(again["depth"], adapted["depth"])


def test_the_script_trains_fully_without_lora_rank_and_checks_the_flags(street_assets, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "train_stablemtl", ROOT / "train_scripts" / "train_stablemtl.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base, data = str(street_assets["base"]), str(street_assets["data"])
    common = ["--pretrained_model_name_or_path", base, "--train_data", data,
              "--tasks", "depth", "--max_train_steps", "1", "--checkpointing_steps", "1",
              "--validation_steps", "100", "--report_to", "none", "--train_batch_size", "2"]  # fmt: skip
    output = script.main([*common, "--output_dir", str(tmp_path / "full")])
    assert not (output / "pytorch_lora_weights.safetensors").exists()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with pytest.raises(ValueError, match="task_layers"):
        script.main(
            [*common, "--output_dir", str(tmp_path / "bad"), "--lora_rank", "2", "--lora_task_layers", "mid"]
        )
    with pytest.raises(ValueError, match="--lora_task_rank needs --lora_rank"):
        script.main([*common, "--output_dir", str(tmp_path / "bad2"), "--lora_task_rank", "2"])


def test_a_resumed_lora_run_ends_with_the_adapters_of_an_uninterrupted_one(street_assets, tmp_path):
    factory = lora_objective_factory(LoRATrainConfig(lora_rank=2, lora_task_rank=2))
    # lr_total_steps: the 2-step run must follow the 4-step run's schedule, as an interrupted run would.
    settings = {"max_train_steps": 4, "lr_total_steps": 4, "checkpointing_steps": 2, "validation_steps": 100}
    straight = train(_config(street_assets, tmp_path / "straight", **settings), factory)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    train(_config(street_assets, tmp_path / "resumed", **{**settings, "max_train_steps": 2}), factory)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = train(
        _config(street_assets, tmp_path / "resumed", **settings, resume_from_checkpoint="latest"), factory
    )
    a = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
