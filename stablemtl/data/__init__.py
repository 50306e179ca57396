"""Data: the synthetic renderer, source profiles, ``datasets`` I/O, readers of real data sets
(``stablemtl.data.readers``), the loader (``load_source``) and augmentation (see docs/data.md).

A *Sample* is a dict ``{"image": (3,H,W) float [0,1], optional "next_image", "source": str,
"labels": {task: tensor}, "valid": {task: (H,W) bool}, optional "intrinsics": (3,3)}``; unlabelled
tasks are absent.
"""

from stablemtl.data.augment import Augmentation, augment_sample, color_jitter
from stablemtl.data.generate import make_dataset
from stablemtl.data.loader import SourceDataset, collate_task_batch, load_source
from stablemtl.data.profiles import SourceProfile, get_profile, profile_names, register_profile
from stablemtl.data.readers import Reader, get_reader, reader_names, register_reader
from stablemtl.data.synthetic import Domain, render_sample

__all__ = [
    "Augmentation",
    "Domain",
    "Reader",
    "SourceDataset",
    "SourceProfile",
    "augment_sample",
    "collate_task_batch",
    "color_jitter",
    "get_profile",
    "get_reader",
    "load_source",
    "make_dataset",
    "profile_names",
    "reader_names",
    "register_profile",
    "register_reader",
    "render_sample",
]
