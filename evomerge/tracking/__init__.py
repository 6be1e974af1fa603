"""Experiment trackers a search run is mirrored to (docs/design.md §7.6)."""
