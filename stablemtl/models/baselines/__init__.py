"""CNN baselines for partially annotated multi-task dense prediction (HiTT, task-prototype retrieval)."""

from stablemtl.models.baselines.backbones import ResNetEncoder, resnet18_config

__all__ = ["ResNetEncoder", "resnet18_config"]
