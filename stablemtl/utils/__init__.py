"""Small helpers every layer may use (they import nothing else from stablemtl)."""

from stablemtl.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
