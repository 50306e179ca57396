"""Training with the latent cache (``--latent_cache_mb``) or the row cache (``--row_cache_mb``) trains the
model that training without them does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from stablemtl.data import SourceDataset
from stablemtl.training import load_config
from stablemtl.training.loop import train
from stablemtl.training.objectives.single_stream import stage1_objective

pytestmark = pytest.mark.usefixtures("fresh_accelerate")


def _run(street_assets, output_dir: Path, **caches: float) -> tuple[dict[str, torch.Tensor], list]:
    config = load_config(
        None,
        pretrained_model_name_or_path=str(street_assets["base"]),
        train_data=[str(street_assets["data"])],
        output_dir=str(output_dir),
        tasks=["depth", "normal"],
        train_batch_size=2,
        gradient_accumulation_steps=1,
        max_train_steps=10,
        checkpointing_steps=10,
        validation_steps=10,
        lr_warmup_steps=0,
        learning_rate=1e-3,
        report_to="none",
        seed=0,
        **caches,
    )
    objectives = []

    def factory(tasks, config, resolution):
        objectives.append(stage1_objective(tasks, config, resolution))
        return objectives[0]

    train(config, factory)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return load_file(str(output_dir / "unet" / "diffusion_pytorch_model.safetensors")), objectives


def test_a_cached_run_serves_repeated_images_from_memory_and_ends_at_the_same_weights(
    street_assets, tmp_path, caplog
):
    plain, (plain_objective,) = _run(street_assets, tmp_path / "plain")
    with caplog.at_level(logging.INFO, logger="stablemtl"):
        cached, (cached_objective,) = _run(street_assets, tmp_path / "cached", latent_cache_mb=1)
    assert plain_objective.step.cache is None
    cache = cached_objective.step.cache
    # 4 street rows x 2 flip states: 20 frames and 20 labels in 10 steps must repeat; a row's frame also
    # repeats across its two tasks.
    assert cache.memo.hits > 0 and len(cache) == cache.memo.misses and cache.memo.bytes <= 2**20
    assert any(r.getMessage().startswith("latent cache: ") for r in caplog.records)
    # Equal up to the float rounding of encoding an image in another batch, against what training moved.
    base = load_file(str(Path(street_assets["base"]) / "unet" / "diffusion_pytorch_model.safetensors"))
    same = [k for k in plain if plain[k].shape == base[k].shape]  # conv_in grew from 4 to 12 channels
    moved = sum(float((plain[k] - base[k]).norm() ** 2) for k in same) ** 0.5
    apart = sum(float((plain[k] - cached[k]).norm() ** 2) for k in plain) ** 0.5
    assert moved > 0.1 and apart < 1e-3 * moved, (moved, apart)


def test_a_row_cached_run_reads_each_row_once_and_ends_at_exactly_the_same_weights(
    street_assets, tmp_path, caplog
):
    decoded = []
    original = SourceDataset._decode

    def counting(self, index, task):
        decoded.append((index, task))
        return original(self, index, task)

    plain, _ = _run(street_assets, tmp_path / "plain")
    SourceDataset._decode = counting
    try:
        with caplog.at_level(logging.INFO, logger="stablemtl"):
            cached, _ = _run(street_assets, tmp_path / "cached", row_cache_mb=64)
    finally:
        SourceDataset._decode = original
    # Rows are copied out of the memo bit for bit, and augmentation is drawn after it: the same run.
    assert plain.keys() == cached.keys() and all(torch.equal(plain[k], cached[k]) for k in plain)
    # 10 steps x 2 samples over 3 training rows x 2 tasks: each (row, task) decoded once (rows read whole:
    # the loop's look at row 0 for the resolution, through the memo, and validation's held-out row 3,
    # outside it).
    training = [key for key in decoded if key[1] is not None]
    assert len(training) == len(set(training)) <= 6
    # The end-of-run summary counts 21 lookups (the 20 training reads and the loop's look at row 0 for the
    # resolution) and keeps each (row, task) read and row 0 whole.
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("row cache: ")]
    assert "% of 21 lookups" in summary and f"({len(training) + 1} entries" in summary, summary


@pytest.mark.parametrize("name", ["latent_cache_mb", "row_cache_mb"])
def test_a_negative_cache_budget_is_refused(street_assets, name):
    with pytest.raises(ValueError, match=f"{name} must be >= 0"):
        load_config(None, train_data=[str(street_assets["data"])], **{name: -1})
