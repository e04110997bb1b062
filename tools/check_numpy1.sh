#!/usr/bin/env bash
# `make check-numpy1`: does erc_ros run the same on NumPy 1.26 as on the development
# machine's NumPy 2? On a robot, the distro's ROS packages are built against NumPy 1.x (Jazzy:
# 1.26, Humble: 1.21), so its venv (README, "On a robot") keeps NumPy below 2.
#
#   1. a scratch venv, build/numpy1-venv, from requirements-robot.txt (+ requirements-nodeps.txt)
#      with NumPy pinned to 1.26.4, as a robot installs it (made once; again when those files
#      change);
#   2. tools/numpy1_check.py in it, with a cache of its own (so `prepare` exports and
#      quantizes the default model under NumPy 1.26): the perception core on a generated
#      conversation, the default model on MELD dev dialogues (PyTorch FP32, ONNX Runtime
#      INT8), the embedded recognizer;
#   3. the same in .venv (NumPy 2; `make setup` first), then the two runs compared.
# Prints the versions pip resolved and exits 1 when the runs differ.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NUMPY1=${NUMPY1:-1.26.4}
VENV="$ROOT/build/numpy1-venv"
OUT="$ROOT/build/numpy1"
mkdir -p "$OUT"
DEV_PY=${DEV_PYTHON:-.venv/bin/python}  # the NumPy 2 reference
[ -x "$DEV_PY" ] || { echo "check-numpy1: run make setup first" >&2; exit 2; }
want=$(cat requirements-robot.txt requirements-nodeps.txt | sha256sum | cut -c1-16)-$NUMPY1
if [ "$(cat "$VENV/.erc_stamp" 2>/dev/null)" != "$want" ]; then
  echo "[check-numpy1] building $VENV (NumPy $NUMPY1 + requirements-robot.txt)"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  echo "numpy==$NUMPY1" > "$OUT/constraints.txt"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-compile \
    -r requirements-robot.txt -c "$OUT/constraints.txt" 2>&1 \
    | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-compile --no-deps \
    -r requirements-nodeps.txt 2>&1 \
    | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" > "$VENV/.erc_stamp"
fi
"$VENV/bin/python" -m pip list --disable-pip-version-check --format=freeze > "$OUT/pip-freeze.txt"
echo "[check-numpy1] NumPy $NUMPY1 run (resolved versions: build/numpy1/pip-freeze.txt)"
ERC_ROS_CACHE="$OUT/cache" PYTHONPATH="$ROOT" "$VENV/bin/python" tools/numpy1_check.py \
  --json "$OUT/numpy1.json"
echo "[check-numpy1] NumPy 2 run ($DEV_PY)"
PYTHONPATH="$ROOT" "$DEV_PY" tools/numpy1_check.py --json "$OUT/numpy2.json"
PYTHONPATH="$ROOT" "$DEV_PY" tools/numpy1_check.py --compare "$OUT/numpy2.json" "$OUT/numpy1.json"
