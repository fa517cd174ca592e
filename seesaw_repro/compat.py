"""Fixes for today's stack, each in one place: lvis-api's np.float, mmengine's torch.load
(safely: weights only), mmengine's checkpoint writes (atomic), instaboostfast's ragged
contours.

`apply()` is idempotent and is called by every entry point that trains or evaluates
(the job, the plugin module that mmdet configs import, the evaluator).
"""

import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from seesaw_repro.errors import UserError
from seesaw_repro.files import write_bytes_atomic


def _restore_numpy_float_alias() -> None:
    # lvis 0.5.3 (lvis/eval.py, LVISEval.accumulate) calls `.astype(dtype=np.float)`; numpy 1.24
    # removed that alias of the builtin float, so every LVIS evaluation would raise AttributeError.
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]


def _checkpoint_globals() -> list:
    """What an mmengine checkpoint pickles besides tensors and builtins: its message hub's
    HistoryBuffer of numpy arrays (the functions numpy rebuilds arrays, scalars and dtypes
    with, taken from numpy itself so that any numpy version names its own)."""
    dtypes = {type(np.dtype(code)) for code in np.typecodes["All"] if code not in "OV"}
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        np.zeros(1).__reduce__()[0],  # numpy's _reconstruct
        np.float64(0).__reduce__()[0],  # numpy's scalar
        *dtypes,
    ]


def _history_buffer_state(self: HistoryBuffer) -> dict:
    # mmengine's HistoryBuffer.__getstate__ adds its class's statistics functions to the
    # pickle (as getattr(HistoryBuffer, "min"), ...), which a weights-only load must refuse:
    # allowing getattr would let a file reach any function. Its __setstate__ puts the same
    # functions back from the class, so leaving them out loses nothing.
    return {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}


def load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    """Load a checkpoint as tensors and mmengine's training state only (weights_only); the
    name is mmengine's pattern for a checkpoint loader ("load_from_" + what it logs).

    mmengine 0.10.7 calls `torch.load(filename)`; torch >= 2.6 loads weights only by default
    and refuses mmengine's HistoryBuffer, so resuming failed. Allowing exactly what its
    checkpoints hold keeps the protection: a file that pickles anything else (a callable
    that would run on loading) is refused with one line.
    """
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)|but got (<[^>]+>)", str(err))
        what = next(g for g in found.groups() if g) if found else "objects other than weights"
        raise UserError(
            f"refusing to load {filename}: it holds {what}, which is neither a tensor nor "
            "mmengine's training state, and unpickling it could run code; if you trust it (a "
            "checkpoint of an earlier version of the suite), re-save it loadable with "
            f"`python -m seesaw_repro.compat {filename}`"
        ) from None


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


def _put_atomically(self: LocalBackend, obj: bytes, filepath: str | Path) -> None:
    # mmengine's LocalBackend.put writes a checkpoint in place: a full disk or a kill midway
    # leaves a truncated iter_N.pth. Written beside it and renamed, a checkpoint on disk is
    # always whole, and a failed write leaves nothing behind.
    write_bytes_atomic(Path(filepath), obj)


_applied = False


def apply() -> None:
    """Install the fixes, once however often it is called (what a test wraps stays)."""
    global _applied
    if _applied:
        return
    _applied = True
    _restore_numpy_float_alias()
    LocalBackend.put = _put_atomically
    _fix_instaboost_contours()
    HistoryBuffer.__getstate__ = _history_buffer_state
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_safely, force=True)


def resave_trusted(path: Path) -> None:
    """Re-save a checkpoint the user trusts (one written before the suite loaded weights
    only) in the form `load_from_local_safely` accepts, replacing it atomically."""
    apply()  # HistoryBuffer pickled without its statistics functions
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    partial = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, partial)
    os.replace(partial, path)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        resave_trusted(Path(name))
        print(f"re-saved {name}")
