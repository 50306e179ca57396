"""stablemtl: one Stable Diffusion UNet as a multi-task dense predictor."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Heavy entry points are imported on first use, so that `import stablemtl` (and the task layer) stays light.
_LAZY_EXPORTS = {
    "StableMTLPipeline": "stablemtl.pipelines.pipeline_stablemtl",
    "StableMTLOutput": "stablemtl.pipelines.pipeline_stablemtl",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'stablemtl' has no attribute {name!r}")
