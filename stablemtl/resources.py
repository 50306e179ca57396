"""Files the toolkit ships beside its code: the embedded tiny base and the YAML configs.

They install as package data (``stablemtl.assets``, ``stablemtl.configs``), so the defaults work the
same from a checkout, an editable install and a wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EMBEDDED_BASE_NAME = "stablemtl-tiny-base"


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def embedded_base() -> Path:
    """The folder of the embedded tiny SD-layout base (``from_pretrained`` loads it offline)."""
    folder = _package_dir("stablemtl.assets") / EMBEDDED_BASE_NAME
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded base {folder} is missing from this installation; reinstall stablemtl, or pass "
            "--pretrained_model_name_or_path (a Hub id such as 'stabilityai/stable-diffusion-2' or a folder)"
        )
    return folder


def config_file(name: str) -> Path:
    """A shipped YAML config by its path under ``configs/``, e.g. ``"demo.yaml"``, ``"data/vkitti2.yaml"``."""
    path = _package_dir("stablemtl.configs") / name
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {name!r} (looked in {path.parent})")
    return path
