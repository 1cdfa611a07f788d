#!/usr/bin/env bash
# GPU session, call 18 (<= $LIMIT s, default 430): the default zoo against the CUDA graph after the concat view
# (6f63c52 changed the kernel hash, so call 15's calibration is refused): a short fp32 calibration, then
# tools/zoo_h200.py with what is left; its JSON is rewritten after every model, so a cut run still reports.
#   source .gl/prelude.sh && bash tools/gpu_session/call18.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
export CONVROUTE_CACHE_DIR=${TMPDIR:-/tmp}/call18/cache  # a calibration of its own
NAME=call18; LIMIT=${LIMIT:-430}; source "$(dirname "$0")/session.sh"
timeout "$(cap 80)" python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget 55 --no-progress \
  > "$R/calibrate.txt" 2>&1
head -4 "$R/calibrate.txt"
pack
left=$((LIMIT - SECONDS - 15))
OUT=$R timeout "$left" python3 tools/zoo_h200.py --no-calibrate --compare torch-cuda-graph --budget $((left - 10)) \
  > "$R/zoo.txt" 2>&1
tail -50 "$R/zoo.txt"
