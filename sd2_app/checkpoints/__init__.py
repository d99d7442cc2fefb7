"""Checkpoints: the catalog of known SD2 repos, the operator allow-list, and Components (one loaded checkpoint)."""
