"""State on disk: atomic writes (a reader sees the old file or the new one, never half
of one), the lock that lets only one process train a run, and generated folders built once."""

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from seesaw_repro.errors import UserError


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder (`temporary_name`)
    and a rename: a reader sees the old file or the new one, never part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, `path` a folder, a signal: leave no temporary file
        tmp.unlink(missing_ok=True)
        raise


def write_image(path: Path, image: np.ndarray) -> None:
    """Write `image` (BGR or grey) as PNG or JPEG, by the suffix of `path`; OpenCV only
    returns False when it cannot (a full disk: it prints an error per image), so that is an
    OSError here, at the first."""
    import cv2  # here, not at the top: every command reads state through this module

    if not cv2.imwrite(str(path), image):
        raise OSError(errno.ENOSPC, "could not write the image (is the disk full?)", str(path))


def temporary_name(path: Path) -> Path:
    """Where this process writes `path` before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when the file does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:  # not JSON, or not even UTF-8 text
        # The suite writes atomically, so this file was changed by something else.
        raise UserError(
            f"{path} is not valid JSON ({type(err).__name__}: {err}); it was not written by "
            "seesaw-repro: delete it and the run's state is read again from its other files"
        ) from err


def try_lock(path: Path, wait_seconds: float = 0.0) -> IO | None:
    """Take an exclusive lock on `path` (created if need be), trying for up to
    `wait_seconds`: the open file, which holds the lock until it is closed or the process
    ends, or None if another process holds it. The kernel drops the lock of a killed
    process, so none goes stale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115  (the caller keeps it open to hold the lock)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)


def build_once(
    root: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], Any]
) -> None:
    """Make `root` with `build(folder)` unless `is_complete(root)`, once however many
    processes ask at the same time: under a lock beside it, into a temporary folder renamed
    into place when complete. The others wait, then find it complete; a build killed midway
    leaves only its temporary folder, which the next build replaces."""
    root = Path(root)
    if is_complete(root):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(f".{root.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        if is_complete(root):
            return
        partial = root.with_name(f".{root.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        if root.exists():  # incomplete, from a version that generated in place
            shutil.rmtree(root)
        os.replace(partial, root)
