"""Fixes for today's stack, each in one place.

`apply()` is idempotent and is called by every entry point that trains or evaluates
(the job, the plugin module that mmdet configs import, the evaluator).
"""

import numpy as np
import torch
from mmengine.runner.checkpoint import CheckpointLoader


def _restore_numpy_float_alias() -> None:
    # lvis 0.5.3 (lvis/eval.py, LVISEval.accumulate) calls `.astype(dtype=np.float)`; numpy 1.24
    # removed that alias of the builtin float, so every LVIS evaluation would raise AttributeError.
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]


def load_from_local_trusted(filename: str, map_location: str | None) -> dict:
    """Load a local checkpoint written by mmengine, allowing its pickled training state.

    mmengine 0.10.7 calls `torch.load(filename)` and torch >= 2.6 defaults to
    `weights_only=True`, which refuses the `HistoryBuffer` and numpy objects that mmengine
    stores in every checkpoint, so resume fails. Our checkpoints are our own files.
    """
    return torch.load(filename, map_location=map_location, weights_only=False)


def apply() -> None:
    """Install both fixes; safe to call more than once."""
    _restore_numpy_float_alias()
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_trusted, force=True)
