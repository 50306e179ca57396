"""stablemtl: one Stable Diffusion UNet as a multi-task dense predictor."""

__version__ = "0.1.0"
