#!/usr/bin/env bash
# GPU session, call 16 (<= $LIMIT s, default 580; after call15.sh, carry .gl .whl .gpucache): why 4 of
# tests/test_wide_convs.py failed on the H100 in call 15 (short tracebacks, with the call-15 calibrations on file
# and with none), then issue 26's default zoo at full size, calibrated, against PyTorch's CUDA graph.
#   source .gl/prelude.sh && bash tools/gpu_session/call16.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call16; LIMIT=${LIMIT:-580}; source "$(dirname "$0")/session.sh"
timeout "$(cap 40)" python3 -m pytest -q -p no:cacheprovider tests/test_wide_convs.py -rf --tb=short \
  > "$R/wide_calibrated.txt" 2>&1
CONVROUTE_CACHE_DIR=$R/empty timeout "$(cap 40)" python3 -m pytest -q -p no:cacheprovider tests/test_wide_convs.py \
  tests/test_conv3d.py -rf --tb=short > "$R/wide_seed.txt" 2>&1
grep -E "^(FAILED|E |[0-9]+ (passed|failed))|passed|failed" "$R"/wide_*.txt | tail -30
pack
# the calibration on file is the H100's (call 15): another card calibrates first
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100 && calibrated=--no-calibrate || calibrated=
OUT=$R timeout "$(cap 480)" python3 tools/zoo_h200.py $calibrated --compare torch-cuda-graph --budget 470 \
  > "$R/zoo.txt" 2>&1
tail -50 "$R/zoo.txt"
