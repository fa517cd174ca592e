#!/usr/bin/env bash
# Set up seesaw-repro on a fresh Debian / Python 3.11 machine: torch, mmcv 2.1.0 with its
# compiled ops (built against exactly that torch), mmengine, mmdet 3.3.0, lvis and the suite.
#
#   ./setup.sh                 CPU: makes .venv with torch 2.13.0 (the CPU build on this disk)
#   VENV=none ./setup.sh       use the active Python environment instead of .venv, keeping the
#                              torch it has: on a GPU cluster, install your CUDA torch first and
#                              set FORCE_CUDA=1 so mmcv compiles its CUDA ops
#
# Other settings: PYTHON (interpreter for the venv), TORCH_SPEC (what pip installs when the
# environment has no torch), MMCV_WHEEL_DIR (a folder of prebuilt mmcv wheels used as a cache
# when one matches this Python and torch; default ../shared/wheels).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_WHEEL_DIR=${MMCV_WHEEL_DIR:-../shared/wheels}
MMCV_VERSION=2.1.0

if [ "$VENV" = none ]; then
  PY=$(command -v python)
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PY="$VENV/bin/python"
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

# mmcv's setup.py imports pkg_resources, which setuptools 81 removed.
pip_install --upgrade pip "setuptools>=77,<81" wheel

if ! "$PY" -c "import torch" 2>/dev/null; then
  pip_install "$TORCH_SPEC"
fi

mmcv_ops_work() { "$PY" -c "from mmcv.ops import RoIAlign, nms; import mmcv; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; }

if ! mmcv_ops_work; then
  # A cached wheel only fits the torch build it was compiled against.
  tag=$("$PY" -c "import sys, torch; print(f'cp{sys.version_info[0]}{sys.version_info[1]}', torch.__version__)")
  wheel="$MMCV_WHEEL_DIR/mmcv-$MMCV_VERSION-${tag%% *}-${tag%% *}-linux_x86_64.whl"
  if [ "${tag#* }" = "2.13.0+cpu" ] && [ -z "${FORCE_CUDA:-}" ] && [ -f "$wheel" ]; then
    echo "setup: installing mmcv from the cached wheel $wheel"
    pip_install "$wheel" || true
  fi
  if ! mmcv_ops_work; then
    echo "setup: compiling mmcv $MMCV_VERSION with its ops against torch ${tag#* } (34 min on 2 cores;"
    echo "       pip keeps the wheel in its cache, so the next setup takes seconds)"
    "$PY" -m pip uninstall -y mmcv >/dev/null 2>&1 || true
    MMCV_WITH_OPS=1 pip_install --no-build-isolation "mmcv==$MMCV_VERSION"
  fi
fi

pip_install -e ".[dev]"
"$PY" -c "
from mmcv.ops import RoIAlign, nms
import mmcv, mmdet, mmengine, torch
print(f'setup: ok: torch {torch.__version__}, mmcv {mmcv.__version__} (ops), '
      f'mmengine {mmengine.__version__}, mmdet {mmdet.__version__}')"
