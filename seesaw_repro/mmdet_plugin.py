"""What a config's `custom_imports` names: registers the suite's modules, its loader of
pretrained backbones and the compatibility fixes, so mmdet's own tools/train.py trains a
config written by the suite."""

# importing registers them
from seesaw_repro import compat
from seesaw_repro.data import pretrained  # noqa: F401
from seesaw_repro.models import (  # noqa: F401
    carafe,
    classification,
    deform_conv,
    htc_lite,
    losses,
    tsd,
    tta,
)
from seesaw_repro.training import hooks, lvis_metric  # noqa: F401

compat.apply()
