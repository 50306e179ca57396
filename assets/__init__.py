"""The embedded tiny base model and README images; installed as ``stablemtl.assets`` (package data)."""
