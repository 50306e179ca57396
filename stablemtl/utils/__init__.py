"""Small helpers every layer may use (they import nothing else from stablemtl)."""

from stablemtl.utils.atomic import (
    atomic_folder,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    plain_modes,
    staging_folder,
)

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "plain_modes",
    "staging_folder",
]
