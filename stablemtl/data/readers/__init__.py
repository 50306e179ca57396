"""Readers for real data sets: each turns one data set's own layout into Sample dicts.

Training sources: ``hypersim``, ``vkitti2``, ``flyingthings3d``. Benchmarks: ``cityscapes``,
``kitti_depth``, ``kitti_flow``, ``diode``, ``mid_intrinsics``, ``nyud`` (also a partially labelled
training set). Your own data: ``plain`` (a folder of images plus per-task label files). Open any of them
with ``stablemtl.data.load_source({"reader": name, "root": ..., "split": ..., "resolution": [H, W]})``
or ``load_source("name:root")``; see docs/data.md.
"""

from __future__ import annotations

from stablemtl.data.readers.base import Reader
from stablemtl.data.readers.cityscapes import CityscapesReader
from stablemtl.data.readers.diode import DiodeReader
from stablemtl.data.readers.flyingthings3d import FlyingThings3DReader
from stablemtl.data.readers.hypersim import HypersimReader
from stablemtl.data.readers.kitti_depth import KittiDepthReader
from stablemtl.data.readers.kitti_flow import KittiFlowReader
from stablemtl.data.readers.mid_intrinsics import MidIntrinsicsReader
from stablemtl.data.readers.nyud import NyudReader
from stablemtl.data.readers.plain import PlainFolderReader
from stablemtl.data.readers.vkitti2 import VirtualKitti2Reader

READERS: dict[str, type[Reader]] = {
    cls.name: cls
    for cls in (
        HypersimReader,
        VirtualKitti2Reader,
        FlyingThings3DReader,
        CityscapesReader,
        KittiDepthReader,
        KittiFlowReader,
        DiodeReader,
        MidIntrinsicsReader,
        NyudReader,
        PlainFolderReader,
    )
}


def reader_names() -> list[str]:
    return list(READERS)


def get_reader(name: str) -> type[Reader]:
    """The reader class called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return READERS[name]
    except KeyError:
        raise ValueError(f"reader {name!r} is unknown; known: {', '.join(READERS)}") from None


def register_reader(cls: type[Reader], overwrite: bool = False) -> type[Reader]:
    """Make a ``Reader`` subclass available to ``load_source`` by its ``name``."""
    if cls.name in READERS and not overwrite:
        raise ValueError(f"reader {cls.name!r} is already registered (pass overwrite=True)")
    READERS[cls.name] = cls
    return cls


__all__ = ["READERS", "Reader", "get_reader", "reader_names", "register_reader"]
