"""Training never loses or mixes work: used output folders, divergence, broken checkpoints, empty labels.

Each test reproduces a failure a user hit (clear error or warning instead of silent damage).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from stablemtl.training import load_config, train
from stablemtl.training.loop import NonFiniteTrainingError

pytestmark = pytest.mark.usefixtures("fresh_accelerate")


def _config(street_assets, output_dir: Path, **overrides):
    settings = {
        "pretrained_model_name_or_path": str(street_assets["base"]),
        "train_data": [str(street_assets["data"])],
        "output_dir": str(output_dir),
        "tasks": ["depth"],
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_train_steps": 2,
        "checkpointing_steps": 1,
        "validation_steps": 100,
        "lr_warmup_steps": 0,
        "report_to": "none",
        "seed": 0,
    }
    settings.update(overrides)
    return load_config(None, **settings)


def test_a_used_output_dir_is_refused_unless_resumed_or_overwritten(street_assets, tmp_path):
    train(_config(street_assets, tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds checkpoints.*checkpoint-1, checkpoint-2"):
        train(_config(street_assets, tmp_path))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    train(_config(street_assets, tmp_path, max_train_steps=1, overwrite_output_dir=True))
    # The old run's checkpoint-2 is gone (it would be "latest"), the user's file stays.
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_diverged_run_stops_naming_the_step_and_saves_nothing_non_finite(street_assets, tmp_path):
    config = _config(street_assets, tmp_path, learning_rate=1e12, max_train_steps=6, max_grad_norm=1e12)
    with pytest.raises(NonFiniteTrainingError, match=r"step \d+ \(task depth\).*checkpoint"):
        train(config)
    assert not (tmp_path / "model_index.json").exists()
    for checkpoint in tmp_path.glob("checkpoint-*"):
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint


def test_a_truncated_checkpoint_names_the_file_and_the_previous_checkpoint(street_assets, tmp_path):
    train(_config(street_assets, tmp_path))
    model = tmp_path / "checkpoint-2" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with pytest.raises(ValueError, match=r"checkpoint-2.*--resume_from_checkpoint checkpoint-1"):
        train(_config(street_assets, tmp_path, max_train_steps=3, resume_from_checkpoint="latest"))


def test_unloadable_rng_states_fail_the_resume_unless_allowed(street_assets, tmp_path, caplog):
    train(_config(street_assets, tmp_path))
    (tmp_path / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"not a pickle")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with pytest.raises(ValueError, match=r"RNG states.*--allow_inexact_resume"):
        train(_config(street_assets, tmp_path, max_train_steps=3, resume_from_checkpoint="latest"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with caplog.at_level(logging.WARNING):
        train(
            _config(
                street_assets,
                tmp_path,
                max_train_steps=3,
                resume_from_checkpoint="latest",
                allow_inexact_resume=True,
            )
        )
    assert "will not match an uninterrupted one" in caplog.text
    assert (tmp_path / "checkpoint-3").is_dir()


def test_a_task_without_valid_labels_is_warned_about(street_assets, tmp_path, caplog, monkeypatch):
    from stablemtl.training import data as training_data

    collate = training_data.collate_groups

    def no_valid_pixels(items):
        groups = collate(items)
        for group in groups:
            group["valid"] = torch.zeros_like(group["valid"])
        return groups

    monkeypatch.setattr(training_data, "collate_groups", no_valid_pixels)
    with caplog.at_level(logging.WARNING):
        train(_config(street_assets, tmp_path, max_train_steps=1))
    assert "1 micro-batch(es) of task depth" in caplog.text and "no valid label pixel" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tasks": ["foo"]}, "unknown task"),
        ({"ema_decay": 2.0}, "ema_decay"),
        ({"input_noise": "gaussian"}, "input_noise"),
        ({"lr_scheduler": "step"}, "lr_scheduler"),
        ({"resolution": 30}, "resolution"),
    ],
)
def test_bad_settings_are_refused_by_name(street_assets, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(street_assets, tmp_path, **overrides)


def test_the_saved_pipeline_records_the_training_settings_and_resolution(street_assets, tmp_path):
    from stablemtl import StableMTLPipeline

    seen = []

    def hook(step, groups, sync, modules):
        seen.append(tuple(groups[0]["image"].shape[-2:]))

    train(_config(street_assets, tmp_path, input_noise="random", resolution=16, lr_scheduler="cosine"), hook)
    pipe = StableMTLPipeline.from_pretrained(tmp_path)
    assert pipe.config.input_noise == "random" and pipe.config.default_processing_resolution == 16
    assert set(seen) == {(16, 16)}  # 32 px renders cropped to the training resolution
    info = pipe.config.training_info
    assert info["lr_scheduler"] == "cosine" and info["seed"] == 0 and info["resolution"] == 16


def test_mixed_precision_defers_to_accelerate_unless_given(street_assets, tmp_path, monkeypatch):
    seen = {}

    def hook(step, groups, sync, modules):
        from accelerate.state import AcceleratorState

        seen["precision"] = str(AcceleratorState().mixed_precision)

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch` sets
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # bf16 on CPU: see test_training
    train(_config(street_assets, tmp_path / "a", max_train_steps=1), hook)
    assert seen["precision"] == "bf16"
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    train(_config(street_assets, tmp_path / "b", max_train_steps=1, mixed_precision="no"), hook)
    assert seen["precision"] == "no"


def test_crops_are_random_but_reproducible_per_sample(street_assets):
    from stablemtl.data import load_source
    from stablemtl.training.data import KeyedSources

    source = load_source(street_assets["data"])
    keyed = KeyedSources([source], resolution=16, random_crop=True, seed=3)
    a, b = keyed[("depth", 0, 1, 0)][1], keyed[("depth", 0, 1, 0)][1]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape[-2:] == (16, 16)
    crops = {tuple(keyed[("depth", 0, 1, epoch)][1]["image"][0, 0, :2].tolist()) for epoch in range(6)}
    assert len(crops) > 1
    full = source[1]
    centred = KeyedSources([source], resolution=16)[("depth", 0, 1, 0)][1]
    torch.testing.assert_close(centred["labels"]["depth"], full["labels"]["depth"][..., 8:24, 8:24])
