"""Fixtures shared by the short training-run tests: a tiny SD base with one small street source, and a
fresh accelerate state per test (in-process runs share accelerate's singletons)."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from stablemtl.data import make_dataset
from stablemtl.testing import make_tiny_sd_folder


@pytest.fixture(scope="module")
def street_assets(tmp_path_factory) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared 2-core machine
    root = tmp_path_factory.mktemp("street_run")
    base = make_tiny_sd_folder(root / "tiny-sd")
    data = make_dataset("street", 4, root / "street", size=32, seed=1)
    yield {"base": base, "data": data}
    torch.set_num_threads(threads)


@pytest.fixture()
def fresh_accelerate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
