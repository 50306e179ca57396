"""stablemtl.data"""
