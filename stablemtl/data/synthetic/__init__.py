"""Procedural renderer with exact labels for every task."""
