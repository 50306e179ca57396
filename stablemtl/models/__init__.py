"""stablemtl.models"""
