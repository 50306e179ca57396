"""HiTT's two phases end to end through the shared loop: phase 1, discovery, phase 2 from scratch."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from stablemtl.data import make_dataset
from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.training.config import TrainConfig, load_configs
from stablemtl.training.hitt_training import train_hitt
from stablemtl.training.objectives.hitt import HiTTConfig


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _configs(data, out, **overrides):
    settings = {
        "train_data": [str(data)],
        "output_dir": str(out),
        "tasks": ["depth", "semantic"],
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_train_steps": 2,
        "validation_steps": 100,
        "report_to": "none",
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "token_dim": 16,
        "num_heads": 2,
        "aspp_rates": [1, 2],
        **overrides,
    }
    return load_configs(None, [TrainConfig, HiTTConfig], **settings)


@pytest.mark.slow
def test_phase_one_then_discovery_and_phase_two_save_loadable_models(tmp_path):
    torch.manual_seed(0)
    data = make_dataset("street", 4, tmp_path / "street", size=32, seed=3)
    phase1 = train_hitt(*_configs(data, tmp_path / "p1"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    phase2 = train_hitt(*_configs(data, tmp_path / "p2", phase=2, phase1_model=str(phase1)))
    stored = sorted(p.name for p in (tmp_path / "p2" / "pseudo_targets").iterdir())
    assert stored == ["00_street.safetensors"]
    teacher, student = HiTTModel.from_pretrained(phase1), HiTTModel.from_pretrained(phase2)
    assert student.task_names == teacher.task_names == ["depth", "semantic"]
    # Retrained from scratch: the phase-2 weights are not the phase-1 weights.
    a, b = teacher.state_dict(), student.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
