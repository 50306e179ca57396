"""The prototype objective: labels reach the model in their prediction space, a micro-batch of one task
trains every shared part, predictions follow the Predictor contract, and the saved folder loads."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import ResNetConfig

from stablemtl.data import collate_task_batch, make_dataset
from stablemtl.data.synthetic.sample import render_sample
from stablemtl.models.baselines.prototype import MODEL_TYPE, PrototypeModel
from stablemtl.tasks import get_task
from stablemtl.training.objectives.prototype import PrototypeConfig, PrototypeObjective, task_outputs

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["semantic", "depth", "normal", "optical_flow", "scene_flow", "albedo", "shading"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


TINY = dict(
    prototype_backbone_config=ResNetConfig(
        num_channels=6, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], layer_type="basic"
    ).to_dict(),
    prototype_feature_channels=16,
    prototype_task_feature_channels=16,
    prototype_codebook_size=32,
    prototype_slot_dim=32,
    prototype_retrieval_blocks=1,
    prototype_retrieval_heads=2,
)


def tiny_config(**overrides) -> PrototypeConfig:
    return PrototypeConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def samples():
    return [render_sample("street", seed=s, size=32) for s in range(2)]


def test_task_outputs_follow_the_task_registry():
    channels, kinds, pairs = task_outputs(TASKS)
    assert channels == {
        "semantic": get_task("semantic").num_classes,
        "depth": 1,
        "normal": 3,
        "optical_flow": 2,
        "scene_flow": 3,
        "albedo": 3,
        "shading": 1,
    }
    assert kinds["semantic"] == "classification" and kinds["normal"] == "unit_vector"
    assert pairs == ["optical_flow", "scene_flow"]


def test_targets_are_the_labels_in_prediction_space(samples):
    objective = PrototypeObjective(tiny_config(), TASKS)
    depth = collate_task_batch(samples, "depth")
    target, valid = objective.targets(depth, torch.device("cpu"))
    assert target.shape == (2, 1, 32, 32) and target.min() >= 0 and target.max() <= 1
    # Affine-invariant: the 2% / 98% quantiles of the valid depth land near 0 and 1.
    assert target[valid[:, None]].min() == 0 and target[valid[:, None]].max() == 1
    semantic = collate_task_batch(samples, "semantic")
    ids, valid = objective.targets(semantic, torch.device("cpu"))
    assert ids.dtype == torch.int64
    torch.testing.assert_close(ids[valid[:, None]], semantic["label"].long()[valid[:, None]])


@pytest.mark.parametrize("task", ["semantic", "optical_flow"])
def test_one_task_micro_batch_trains_the_shared_parts_and_its_head(samples, task):
    objective = PrototypeObjective(tiny_config(), TASKS)
    modules = objective.trainable_modules()
    loss = objective.loss(modules, [collate_task_batch(samples, task)])
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    model = modules["model"]
    for name, parameter in model.named_parameters():
        head_of_other_task = name.startswith("heads.") and not name.startswith(f"heads.{task}.")
        assert (parameter.grad is None) == head_of_other_task, name


def test_loss_weights_are_applied(samples):
    group = [collate_task_batch(samples, "depth")]
    base = PrototypeObjective(tiny_config(), TASKS)
    tke_only = PrototypeObjective(tiny_config(use_task_consistency=False), TASKS, model=base.model)
    model = base.model
    terms = model.compute_losses(
        group[0]["image"], None, {"depth": base.targets(group[0], torch.device("cpu"))}
    )
    expected = (
        terms["supervised"] + terms["reconstruction"] + terms["vq"] + 0.1 * (terms["tke"] + terms["tc"])
    )
    torch.testing.assert_close(base.loss(base.trainable_modules(), group), expected)
    torch.testing.assert_close(
        tke_only.loss(tke_only.trainable_modules(), group), expected - 0.1 * terms["tc"]
    )


def test_predict_and_save_model_round_trip(samples, tmp_path):
    objective = PrototypeObjective(tiny_config(), TASKS)
    modules = objective.trainable_modules()
    images = torch.stack([s["image"] for s in samples])
    next_images = torch.stack([s["next_image"] for s in samples])
    predictions = objective.predict(modules, images, next_images, TASKS)
    assert predictions["semantic"].shape == (2, 1, 32, 32) and predictions["optical_flow"].shape == (
        2,
        2,
        32,
        32,
    )
    (tmp_path / "checkpoint-1").mkdir()  # the output folder also holds the run's checkpoints
    objective.save_model(modules, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == MODEL_TYPE
    assert not (tmp_path / ".tmp-prototype").exists() and (tmp_path / "checkpoint-1").is_dir()
    loaded = PrototypeModel.from_pretrained(tmp_path)
    for task, prediction in loaded.predict(images, next_images, TASKS).items():
        torch.testing.assert_close(prediction, predictions[task])


def test_bad_settings_raise_value_errors():
    with pytest.raises(ValueError, match="akg"):
        PrototypeConfig(lambda_akg=-1.0)
    with pytest.raises(ValueError, match="unknown"):
        task_outputs(["depht"])


def test_train_script_runs_the_shared_loop_and_saves_a_loadable_model(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared CPU: one thread is fastest
    try:
        data = [make_dataset(p, 4, tmp_path / "data" / p, size=32, seed=1) for p in ("indoor", "street")]
        spec = importlib.util.spec_from_file_location(
            "train_prototype", ROOT / "train_scripts" / "train_prototype.py"
        )
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        flags = ["--train_data", *map(str, data), "--output_dir", str(tmp_path / "out")]
        flags += ["--train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_train_steps", "3"]
        flags += ["--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--report_to", "none", "--seed", "3"]
        flags += ["--checkpointing_steps", "3", "--validation_steps", "3", "--num_validation_images", "1"]
        flags += ["--no-use_task_consistency", "--lambda_akg", "0.5"]
        for key, value in TINY.items():
            flags += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
        out = script.main(flags)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)  # in-process runs share accelerate's singletons
        GradientState._reset_state()
    model = PrototypeModel.from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["slot_dim"] == 32
    assert (out / "checkpoint-3").is_dir() and (out / "validation" / "step-0000003.png").is_file()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    predictions = model.predict(image, image, model.tasks)
    assert set(predictions) == set(model.tasks) and "optical_flow" in predictions
    # The weights moved away from the initialisation of the same configuration.
    fresh = PrototypeObjective(tiny_config(), model.tasks).model
    assert not torch.equal(
        fresh.task_decoders["depth"][0][0].weight, model.task_decoders["depth"][0][0].weight
    )
