"""LVIS evaluation in numpy (no torch, no mmdet)."""
