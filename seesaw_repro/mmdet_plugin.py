"""What a config's `custom_imports` names: registers the suite's modules and applies the
compatibility fixes, so mmdet's own tools/train.py trains a config written by the suite."""

from . import carafe, classification, compat, hooks, htc_lite, losses, lvis_eval, tsd, tta  # noqa: F401  (importing registers them)

compat.apply()
