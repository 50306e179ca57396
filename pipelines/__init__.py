"""Diffusers pipelines of stablemtl (importable as ``pipelines`` and loadable as custom pipelines)."""
