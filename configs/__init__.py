"""YAML settings (runs, data sets); installed as ``stablemtl.configs`` (package data)."""
