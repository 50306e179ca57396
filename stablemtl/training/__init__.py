"""stablemtl.training"""
