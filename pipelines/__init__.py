"""Diffusers pipelines of stablemtl (importable as ``stablemtl.pipelines``, loadable as custom pipelines).

The classes are imported on first access, so that importing one module of this package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StableMTLPipeline": "pipeline_stablemtl",
    "StableMTLOutput": "pipeline_stablemtl",
    "StableMTLImageProcessor": "image_processor",
    "StableMTLMultiStreamPipeline": "pipeline_stablemtl_multistream",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
