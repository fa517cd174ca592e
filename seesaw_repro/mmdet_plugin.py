"""What a config's `custom_imports` names: registers the suite's modules, its loader of
pretrained backbones and the compatibility fixes, so mmdet's own tools/train.py trains a
config written by the suite."""

# importing registers them
from . import (  # noqa: F401
    carafe,
    classification,
    compat,
    deform_conv,
    hooks,
    htc_lite,
    losses,
    lvis_metric,
    pretrained,
    tsd,
    tta,
)

compat.apply()
