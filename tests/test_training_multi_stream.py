"""Stage-2 objective: equals stage 1 at step 0, learns, predicts, saves a loadable multi-stream pipeline."""

import copy

import pytest
import torch

from stablemtl import StableMTLPipeline
from stablemtl.pipelines.pipeline_stablemtl_multistream import StableMTLMultiStreamPipeline
from stablemtl.testing import make_tiny_sd_folder
from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.objectives.multi_stream import MultiStreamConfig, MultiStreamObjective
from stablemtl.training.objectives.single_stream import StableMTLObjective

TASKS = ["depth", "normal", "optical_flow"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    base = make_tiny_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)
    pipe = StableMTLPipeline.from_base(base, tasks=TASKS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def objective(stage1, **settings) -> MultiStreamObjective:
    pipe = StableMTLMultiStreamPipeline.from_stage1(copy.deepcopy(stage1), query_hidden_dim=16)
    pipe.set_progress_bar_config(disable=True)
    ms = MultiStreamObjective(pipe, MultiStreamConfig(**settings))
    ms.setup(torch.device("cpu"), torch.float32)
    return ms


def group(task="depth", seed=0, pair=False):
    g = torch.Generator().manual_seed(seed)
    channels = {"depth": 1, "normal": 3, "optical_flow": 2}[task]
    label = torch.rand(2, channels, 32, 32, generator=g) * 2 - 1
    if task == "depth":
        label = label + 2
    if task == "normal":
        label = torch.nn.functional.normalize(label, dim=1)
    return {
        "task": task,
        "image": torch.rand(2, 3, 32, 32, generator=g),
        "next_image": torch.rand(2, 3, 32, 32, generator=g) if pair else None,
        "label": label,
        "valid": torch.ones(2, 32, 32, dtype=torch.bool),
        "source": ["synthetic"] * 2,
    }


@pytest.mark.parametrize(("task", "pair"), [("depth", False), ("optical_flow", True)])
def test_step_zero_equals_stage1(stage1, task, pair):
    ms = objective(stage1)
    single = StableMTLObjective(copy.deepcopy(stage1))
    single.setup(torch.device("cpu"), torch.float32)
    groups = [group(task, pair=pair)]
    torch.manual_seed(0)
    loss = ms.loss(ms.trainable_modules(), groups)
    expected = single.loss(single.trainable_modules(), groups)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        ours = ms.predict(ms.trainable_modules(), groups[0]["image"], groups[0]["next_image"], TASKS)
        theirs = single.predict(
            single.trainable_modules(), groups[0]["image"], groups[0]["next_image"], TASKS
        )
    for name in TASKS:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3)


def test_training_steps_lower_the_loss_and_move_away_from_stage1(stage1, tmp_path):
    ms = objective(stage1, train_only_task_attention=True)
    modules = ms.trainable_modules()
    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in ms.model.task_attention.parameters()}
    assert ms.ddp_find_unused_parameters  # one main task per micro-batch leaves other tasks' MLPs unused
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    groups = [group("normal", seed=1)]
    torch.manual_seed(0)
    losses = []
    for _ in range(6):
        loss = ms.loss(modules, groups)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    single = StableMTLObjective(copy.deepcopy(stage1))
    single.setup(torch.device("cpu"), torch.float32)
    with torch.no_grad():
        ours = ms.predict(modules, groups[0]["image"], None, ["normal"])["normal"]
        theirs = single.predict(single.trainable_modules(), groups[0]["image"], None, ["normal"])["normal"]
    assert (ours - theirs).abs().max() > 1e-3

    ms.save_model(modules, tmp_path / "s2")
    loaded = StableMTLMultiStreamPipeline.from_pretrained(tmp_path / "s2")
    for (name, a), (_, b) in zip(
        loaded.task_attention.state_dict().items(), ms.model.task_attention.state_dict().items()
    ):
        assert torch.equal(a, b), name
    loaded.set_progress_bar_config(disable=True)
    prediction = loaded(groups[0]["image"], tasks=["normal"], output_type="pt").normal
    torch.testing.assert_close(prediction, ours, atol=1e-3, rtol=1e-3)


def test_masking_draws_follow_the_seed_and_the_batch(stage1):
    ms = objective(stage1, task_masking="random", task_masking_ratio=1.0)
    with torch.no_grad():
        for p in ms.model.task_attention.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))

    def run(seed, batch_seed=0):
        ms.seed = seed
        return ms.loss(ms.trainable_modules(), [group("depth", seed=batch_seed)]).item()

    assert run(0) == run(0)  # nothing else (e.g. the global RNG) matters
    assert len({run(seed) for seed in range(6)}) > 1  # different run seeds hide different tasks
    assert len({run(0, batch) - run(0, batch) for batch in range(2)}) == 1
    with torch.no_grad():
        assert ms.masking([group("depth")]) is None  # no masking in evaluation


def test_settings_parse_beside_the_train_config():
    train_config, model_config = parse_configs(
        ["--stage1_model", "runs/s1", "--task_masking", "highest", "--no-exclude_main_task"],
        TrainConfig,
        MultiStreamConfig,
    )
    assert model_config.stage1_model == "runs/s1" and model_config.task_masking == "highest"
    assert model_config.exclude_main_task is False and isinstance(train_config, TrainConfig)
    with pytest.raises(ValueError, match="task_masking"):
        MultiStreamConfig(task_masking="top_random_k")
