"""A run's job (seesaw_repro.job) that crashes at a chosen moment, for the resume tests:

    python tests/crash_job.py RUN_DIR MOMENT N raise|kill

MOMENT is "train" (the Nth training iteration, of either loop), "save" (the Nth
checkpoint, half written to its temporary file) or "eval" (the Nth image of the
evaluation); "kill" is SIGKILL (nothing runs after it), "raise" an exception, as a bug or an
out-of-memory error would.
Exit code 86 if the moment never came.
"""

import os
import signal
import sys
from pathlib import Path

from mmengine.fileio.backends import LocalBackend
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, ValLoop

from seesaw_repro import compat, job
from seesaw_repro.files import temporary_name

NEVER_CAME = 86


def crash(how: str, where: str) -> None:
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected crash: {where}")


def crash_at(owner: type, method: str, n: int, how: str) -> None:
    """Make the nth call of owner.method crash (a "save" writes half its bytes first)."""
    original = getattr(owner, method)
    calls = 0

    def wrapped(self, *args, **kwargs):  # noqa: ANN001, ANN202
        nonlocal calls
        calls += 1
        if calls == n:
            if method == "put":  # LocalBackend.put(obj: bytes, filepath), as compat's
                data, path = args[0], Path(args[1])
                temporary_name(path).write_bytes(data[: len(data) // 2])
            crash(how, f"{owner.__name__}.{method} call {n}")
        return original(self, *args, **kwargs)

    setattr(owner, method, wrapped)


if __name__ == "__main__":
    run_dir, moment, n, how = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    owners = {
        "train": [IterBasedTrainLoop, EpochBasedTrainLoop],  # whichever the run's config has
        "save": [LocalBackend],
        "eval": [ValLoop],
    }[moment]
    compat.apply()  # the suite's LocalBackend.put, which the "save" crash wraps
    for owner in owners:
        crash_at(owner, "put" if moment == "save" else "run_iter", n, how)
    code = job.main(run_dir.resolve())
    sys.exit(NEVER_CAME if code == 0 else code)
