"""Merge methods, per-tensor dispatch, and the materialisers that build merged models."""
