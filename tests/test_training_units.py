"""Pieces of the training loop: LR schedule, masked loss, config and flags, clipping, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from stablemtl.data.sampler import SourceInfo, TaskIsolatedSampler
from stablemtl.training.checkpointing import (
    latest_checkpoint,
    list_checkpoints,
    remove_incomplete,
    resolve_resume,
    save_checkpoint,
)
from stablemtl.training.config import TrainConfig, load_config, parse_args
from stablemtl.training.extra_state import load_extra_state
from stablemtl.training.loss import masked_latent_mse
from stablemtl.training.schedule import get_warmup_exponential_scheduler, warmup_exponential_factor
from stablemtl.training.step import micro_step


# -- schedule -------------------------------------------------------------------------------------------
def test_official_schedule_values_in_optimizer_steps():
    f = lambda k: warmup_exponential_factor(k, 100, 25000, 0.01)  # noqa: E731
    assert f(0) == 0.0 and f(50) == 0.5 and f(100) == 1.0
    assert f(100 + 12450) == pytest.approx(0.1)  # half-way through the decay: sqrt(0.01)
    assert f(25000) == pytest.approx(0.01) and f(30000) == 0.01
    # The official stage-1 run stops at 20,000 steps: lr = 1e-4 * 0.01 ** (19900 / 24900) ~ 2.5e-6.
    assert 1e-4 * f(20000) == pytest.approx(2.522e-6, rel=1e-3)
    # A run shorter than its warm-up stays in the warm-up.
    assert [warmup_exponential_factor(k, 50, 3, 0.01) for k in range(3)] == [0.0, 0.02, 0.04]


def test_lambda_lr_follows_the_factor_per_step():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    scheduler = get_warmup_exponential_scheduler(optimizer, warmup_steps=2, total_steps=6, final_ratio=0.01)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    decay = [1e-3 * 0.01 ** (i / 4) for i in range(5)]
    assert lrs == pytest.approx([0.0, 5e-4, *decay, 1e-5])


def test_schedule_rejects_bad_lengths():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="lr_total_steps"):
        get_warmup_exponential_scheduler(optimizer, 100, 0)
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        get_warmup_exponential_scheduler(optimizer, -1, 10)
    with pytest.raises(ValueError, match="lr_final_ratio"):
        get_warmup_exponential_scheduler(optimizer, 1, 10, 0.0)


# -- loss ------------------------------------------------------------------------------------------------
def test_masked_latent_mse_averages_valid_cells_over_channels():
    prediction = torch.zeros(2, 4, 2, 2)
    target = torch.zeros(2, 4, 2, 2)
    target[0, :, 0, 0] = 2.0  # valid cell: squared error 4 on each of 4 channels
    target[1, :, 1, 1] = 100.0  # invalid cell: ignored
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[1, 1, 1] = False
    # 7 valid cells x 4 channels = 28 elements, total squared error 16.
    assert masked_latent_mse(prediction, target, mask).item() == pytest.approx(16 / 28)


def test_masked_latent_mse_of_an_all_invalid_batch_is_zero_with_a_zero_gradient():
    prediction = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = masked_latent_mse(prediction, torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(prediction.grad, torch.zeros_like(prediction))


def test_masked_latent_mse_checks_shapes():
    with pytest.raises(ValueError, match="mask"):
        masked_latent_mse(
            torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 4, dtype=torch.bool)
        )


# -- config ----------------------------------------------------------------------------------------------
def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(
        "learning_rate: 3e-5\ntrain_batch_size: 4\ngradient_checkpointing: true\n"
        "source_weights: {depth: {indoor: 0.9, street: 0.1}}\ntrain_data: [a, b]\n"
    )
    config = parse_args(
        [
            "--config",
            str(yaml_path),
            "--train_batch_size",
            "2",
            "--no-gradient_checkpointing",
            "--tasks",
            "depth",
        ]
    )
    assert config.learning_rate == 3e-5  # YAML, read as a float although YAML gives a string
    assert config.train_batch_size == 2  # flag beats YAML
    assert config.gradient_checkpointing is False
    assert config.tasks == ["depth"] and config.train_data == ["a", "b"]
    assert config.source_weights == {"depth": {"indoor": 0.9, "street": 0.1}}
    assert config.gradient_accumulation_steps == TrainConfig().gradient_accumulation_steps == 2  # default


def test_every_flag_of_the_issue_is_accepted_under_its_diffusers_name():
    config = parse_args(
        "--pretrained_model_name_or_path stabilityai/stable-diffusion-2 --output_dir out "
        "--train_batch_size 3 --gradient_accumulation_steps 4 --learning_rate 2e-5 --lr_warmup_steps 7 "
        "--max_train_steps 11 --mixed_precision bf16 --gradient_checkpointing --allow_tf32 --use_8bit_adam "
        "--enable_xformers_memory_efficient_attention --checkpointing_steps 5 --checkpoints_total_limit 2 "
        "--resume_from_checkpoint latest --report_to tensorboard --validation_steps 6 --seed 9 "
        "--push_to_hub --hub_model_id me/model --task_sampling adaptive --task_grouping joint".split()
    )
    assert config.pretrained_model_name_or_path == "stabilityai/stable-diffusion-2"
    assert (config.output_dir, config.train_batch_size, config.gradient_accumulation_steps) == ("out", 3, 4)
    assert (config.learning_rate, config.lr_warmup_steps, config.max_train_steps) == (2e-5, 7, 11)
    assert config.mixed_precision == "bf16" and config.gradient_checkpointing and config.allow_tf32
    assert config.use_8bit_adam and config.enable_xformers_memory_efficient_attention
    assert (config.checkpointing_steps, config.checkpoints_total_limit) == (5, 2)
    assert (config.resume_from_checkpoint, config.report_to, config.validation_steps) == (
        "latest",
        "tensorboard",
        6,
    )
    assert (config.seed, config.push_to_hub, config.hub_model_id) == (9, True, "me/model")
    assert (config.task_sampling, config.task_grouping) == ("adaptive", "joint")


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="learnig_rate"):
        load_config(None, learnig_rate=1.0)
    with pytest.raises(ValueError, match="task_sampling"):
        load_config(None, task_sampling="roundrobin")
    with pytest.raises(ValueError, match="hub_model_id"):
        load_config(None, push_to_hub=True)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# -- checkpoints -----------------------------------------------------------------------------------------
class _Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": torch.tensor(self.value)}

    def load_state_dict(self, state):
        self.value = int(state["value"])


def test_checkpoints_are_atomic_rotated_and_resumable(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    counter = _Counter()
    accelerator.register_for_checkpointing(counter)
    (tmp_path / ".tmp-checkpoint-9").mkdir()  # a save killed half-way: never taken for a checkpoint
    for step in (1, 2, 3):
        counter.value = step
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(accelerator, tmp_path, step, total_limit=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"
    assert (tmp_path / "checkpoint-3" / "model.safetensors").is_file()
    remove_incomplete(tmp_path)
    assert not (tmp_path / ".tmp-checkpoint-9").exists()

    accelerator.load_state(str(resolve_resume("checkpoint-2", tmp_path)))
    assert counter.value == 2 and torch.all(model.weight == 2)
    assert resolve_resume("latest", tmp_path).name == "checkpoint-3"
    assert resolve_resume("latest", tmp_path / "empty") is None
    with pytest.raises(ValueError, match="checkpoint-<step>"):
        resolve_resume("checkpoint-7", tmp_path)


def _trained_sampler_and_ema(windows: int) -> tuple[TaskIsolatedSampler, EMAModel, torch.nn.Linear]:
    sources = [SourceInfo("indoor", 6, ("depth", "normal")), SourceInfo("street", 5, ("depth",))]
    sampler = TaskIsolatedSampler(sources, ["depth", "normal"], 2, 1, seed=4, task_sampling="adaptive")
    model = torch.nn.Linear(3, 2)
    ema = EMAModel(model.parameters(), decay=0.5)
    it = iter(sampler)
    for w in range(windows):
        window = next(it)
        sampler.report(window[0][0], 1.0 / (w + 1))
        with torch.no_grad():
            model.weight.add_(w + 1)
        ema.step(model.parameters())
    return sampler, ema, model


def test_sampler_and_ema_are_saved_as_safetensors_and_restored_exactly(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    sampler, ema, _ = _trained_sampler_and_ema(3)
    folder = save_checkpoint(accelerator, tmp_path, 3, sampler=sampler, ema=ema)
    names = sorted(p.name for p in folder.iterdir())
    assert {"sampler.safetensors", "ema.safetensors", "ema.json"} <= set(names)
    # Only accelerate's own RNG states are pickles: no custom_checkpoint_N.pkl any more.
    assert [n for n in names if n.endswith(".pkl")] == ["random_states_0.pkl"]
    assert load_file(str(folder / "sampler.safetensors"))["windows_done"].item() == 3

    fresh_sampler, fresh_ema, _ = _trained_sampler_and_ema(0)
    load_extra_state(folder, fresh_sampler, fresh_ema, "cpu")
    assert fresh_sampler.windows_done == 3 and fresh_sampler.window_tasks == sampler.window_tasks
    assert torch.equal(fresh_sampler.adaptive.average, sampler.adaptive.average)
    assert fresh_ema.optimization_step == ema.optimization_step == 3
    assert all(torch.equal(a, b) for a, b in zip(fresh_ema.shadow_params, ema.shadow_params))
    # The restored sampler continues exactly where the saved one would have.
    assert next(iter(fresh_sampler)) == next(iter(sampler))


def test_resuming_with_the_other_use_ema_or_without_the_sampler_file_is_a_clear_error(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    sampler, ema, _ = _trained_sampler_and_ema(2)
    with_ema = save_checkpoint(accelerator, tmp_path / "ema", 2, sampler=sampler, ema=ema)
    without_ema = save_checkpoint(accelerator, tmp_path / "plain", 2, sampler=sampler)
    fresh_sampler, fresh_ema, _ = _trained_sampler_and_ema(0)
    with pytest.raises(ValueError, match="holds an EMA state but use_ema is off"):
        load_extra_state(with_ema, fresh_sampler, None, "cpu")
    with pytest.raises(ValueError, match="holds no EMA state but use_ema is on"):
        load_extra_state(without_ema, fresh_sampler, fresh_ema, "cpu")
    (with_ema / "ema.json").unlink()
    with pytest.raises(ValueError, match=r"ema\.json is missing"):
        load_extra_state(with_ema, fresh_sampler, fresh_ema, "cpu")
    (without_ema / "sampler.safetensors").unlink()
    with pytest.raises(ValueError, match=r"sampler\.safetensors is missing"):
        load_extra_state(without_ema, fresh_sampler, None, "cpu")


# -- one micro-batch ---------------------------------------------------------------------------------
class _LinearObjective:
    """Stands in for an objective: loss = w . c, so the gradient is exactly ``c``."""

    def __init__(self, c: torch.Tensor):
        self.c = c

    def loss(self, modules, groups):
        return (modules["linear"].weight[0] * self.c).sum()


def test_micro_step_clips_the_gradient_norm_and_returns_it_before_clipping():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    objective = _LinearObjective(torch.tensor([30.0, 40.0]))  # gradient norm 50
    loss, norm = micro_step(accelerator, {"linear": model}, objective, optimizer, [], max_grad_norm=5.0)
    assert float(loss) == 0.0 and float(norm) == pytest.approx(50.0)
    # Clipped to norm 5 along the same direction: one SGD step of lr 1 moves w by -(3, 4).
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-3.0, -4.0]]))
    # Below the threshold nothing is scaled: the gradient (0.3, 0.4) is applied as it is.
    objective.c = torch.tensor([0.3, 0.4])
    _, norm = micro_step(accelerator, {"linear": model}, objective, optimizer, [], max_grad_norm=5.0)
    assert float(norm) == pytest.approx(0.5)
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-3.3, -4.4]]))


def test_a_save_killed_between_its_two_renames_keeps_the_old_checkpoint(tmp_path: Path):
    # save_checkpoint of an existing step N moves checkpoint-N aside, then renames the new copy into
    # place: killed in between, both copies are .tmp-checkpoint-* folders and checkpoint-N is missing.
    def folder(name: str, content: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text(content)

    folder(".tmp-checkpoint-4-old", "step 4, first save")
    folder(".tmp-checkpoint-4", "step 4, second save (maybe incomplete)")
    folder("checkpoint-2", "step 2, second save")
    folder(".tmp-checkpoint-2-old", "step 2, first save")  # killed after both renames
    remove_incomplete(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / "model.safetensors").read_text() == "step 4, first save"
    assert (tmp_path / "checkpoint-2" / "model.safetensors").read_text() == "step 2, second save"
    assert resolve_resume("latest", tmp_path).name == "checkpoint-4"
