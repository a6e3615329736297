#!/usr/bin/env bash
# Create .venv-mlserver: MLServer plus fogline's models extra, for serving fogline's full models
# with MLServer (cloud/mlserver_runtime.py) and for tests/integration/test_mlserver.py.
#
# MLServer gets its own environment because its dependency pins (fastapi, pandas, opentelemetry,
# protobuf ranges) are not fogline's. torch is pinned to the CPU build: an unpinned `pip install
# torch` pulls the multi-GB CUDA build. Safe to re-run: an existing environment is only topped up.
#
#   scripts/setup_mlserver.sh              # uses python3
#   PYTHON=python3.11 scripts/setup_mlserver.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-mlserver
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo ">> installing torch==$TORCH_VERSION, mlserver==$MLSERVER_VERSION and fogline[models] into $VENV"
"$VENV/bin/python" -m pip install --quiet --progress-bar off "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet --progress-bar off "torch==$TORCH_VERSION" \
    "mlserver==$MLSERVER_VERSION" -e ".[models]"
"$VENV/bin/mlserver" --version
echo ">> done: write a repository with 'python -m fogline.cloud.mlserver_repo --models DIR --out REPO',"
echo "   then '$VENV/bin/mlserver start REPO'"
