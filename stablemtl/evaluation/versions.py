"""Provenance written into every report: package versions and a UTC timestamp."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata

_PACKAGES = (
    "stablemtl", "torch", "numpy", "diffusers", "transformers", "accelerate", "peft",
    "torchmetrics", "scikit-image", "kornia",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that affect the numbers (read from metadata, no imports)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def utc_timestamp() -> str:
    """Now, ISO 8601 in UTC to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
