"""Command-line entry points (they may import every layer of the toolkit)."""
