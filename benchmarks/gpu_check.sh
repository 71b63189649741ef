#!/usr/bin/env bash
# GPU check (issue 14): the device, then every method trained one epoch with mixed precision off
# and on, as a table of images/s (benchmarks/gpu_check.py; docs/benchmarks.md). Under 5 minutes
# on one GPU. Installs nothing when an environment exists, so it runs on a machine without
# internet access:
#   benchmarks/gpu_check.sh                      # auto device, every method, small net + resnet18
#   PYTHON=/path/to/python benchmarks/gpu_check.sh
#   benchmarks/gpu_check.sh --device cpu --toy   # any extra options: one table with those (seconds on CPU)
# The Python it uses: $PYTHON, else the repo's .venv, else python3 on PATH if it imports torch,
# else a .venv made by `make setup` (needs the package index).
set -euo pipefail
cd "$(dirname "$0")/.."

has_torch() { "$1" -c "import torch, click, yaml" >/dev/null 2>&1; }
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
elif has_torch python3; then
  py=python3
else  # no environment at all: try to make one (fails fast-ish without the package index)
  echo "No .venv here: trying \`make setup\` (needs the package index; 5 minutes at most)..." >&2
  timeout 300 make -s setup >&2 || true
  py=.venv/bin/python
fi
if ! has_torch "$py"; then
  echo "Error: ${py} cannot import torch (and focusml's dependencies); run \`make setup\` where the package index is reachable, or set PYTHON to an interpreter that has them." >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's focusml, installed or not
export FOCUSML_CACHE="${FOCUSML_CACHE:-$(mktemp -d)}"  # the generative method's inpainter: trained once here

if [ "$#" -gt 0 ]; then
  exec "$py" benchmarks/gpu_check.py "$@"
fi
status=0
"$py" benchmarks/gpu_check.py || status=$?
echo
"$py" benchmarks/gpu_check.py --model resnet18 --image-size 64 --methods baseline,pas,pasa,rrr,rrr_gradcam,cdep \
  || status=$?
exit "$status"
