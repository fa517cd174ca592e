"""Fixes for today's stack, each in one place: lvis-api's np.float, mmengine's torch.load,
instaboostfast's ragged contours.

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


def _mask_to_polygons(binary_mask: np.ndarray, tolerance: float = 0) -> list[list[float]]:
    """instaboostfast's binary_mask_to_polygon without its ragged array: the mask's contours
    (on the mask padded by one pixel, so that contours at the border close), shifted back,
    closed, simplified within `tolerance`, as COCO polygons [x0, y0, x1, y1, ...] clipped at
    zero; contours of fewer than 3 points dropped."""
    from instaboostfast.pycococreater import close_contour
    from skimage import measure

    polygons = []
    for contour in measure.find_contours(np.pad(binary_mask, 1), 0.5):
        contour = measure.approximate_polygon(close_contour(contour - 1), tolerance)
        if len(contour) >= 3:
            polygons.append(np.clip(np.flip(contour, axis=1).ravel(), 0, None).tolist())
    return polygons


def _fix_instaboost_contours() -> None:
    # instaboostfast 0.1.2 (pycococreater.binary_mask_to_polygon) calls
    # np.subtract(contours, 1) on a list of contours of different lengths; numpy >= 1.24
    # refuses ragged arrays, so InstaBoost (Table 12's augmentation) raises ValueError on
    # any instance with two contours. Its affine_transform module calls the function.
    from instaboostfast import affine_transform

    affine_transform.binary_mask_to_polygon = _mask_to_polygons


def apply() -> None:
    """Install the fixes; safe to call more than once."""
    _restore_numpy_float_alias()
    _fix_instaboost_contours()
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_trusted, force=True)
