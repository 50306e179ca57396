"""The package works when installed as a wheel, not only from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "stablemtl").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject: {sorted(found - listed)}"
    assert config["package-dir"]["stablemtl.pipelines"] == "pipelines"
    assert not (ROOT / "stablemtl" / "pipelines").exists()  # one import name, no symlink


@pytest.mark.slow
def test_a_wheel_install_builds_a_pipeline_from_the_embedded_base_outside_the_checkout(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", "tests"),
    )
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "--target", str(target), str(source)], check=True, capture_output=True)
    shutil.rmtree(source)  # nothing may still point into the source tree
    script = f"""
import sys
sys.path.insert(0, {str(target)!r})
import stablemtl, stablemtl.pipelines
assert stablemtl.__file__.startswith({str(target)!r}), stablemtl.__file__
assert stablemtl.pipelines.__file__.startswith({str(target)!r}), stablemtl.pipelines.__file__
from stablemtl import StableMTLPipeline
from stablemtl.data import render_sample
from stablemtl.resources import config_file, embedded_base
from stablemtl.training.config import TrainConfig, load_config
assert TrainConfig().resolve_base() == str(embedded_base())
assert load_config(config_file("demo.yaml")).max_train_steps > 0
pipe = StableMTLPipeline.from_base(embedded_base(), tasks=["depth", "normal"])
pipe.set_progress_bar_config(disable=True)
sample = render_sample("street", seed=0, size=32)
out = pipe(sample["image"], tasks=["depth", "normal"], output_type="pt")
print("OK", tuple(out.depth.shape), tuple(out.normal.shape))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK (1, 1, 32, 32) (1, 3, 32, 32)" in result.stdout
