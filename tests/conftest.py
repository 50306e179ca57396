"""Fixtures shared by the short training-run tests: a tiny SD base with one small street source, and a
fresh accelerate state per test (in-process runs share accelerate's singletons); the base's recipe script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
def one_thread():
    """One torch thread for the test (tiny tensors run fastest so on a shared 2-core machine), then the
    machine's threads back for later tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def fresh_accelerate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture()
def pretrain_script(monkeypatch):
    """``train_scripts/pretrain_tiny_base.py`` as a module, its ``tiny_base_report`` importable beside it
    (as when the script runs)."""
    scripts = Path(__file__).resolve().parents[1] / "train_scripts"
    monkeypatch.syspath_prepend(str(scripts))
    spec = importlib.util.spec_from_file_location("pretrain_tiny_base", scripts / "pretrain_tiny_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
