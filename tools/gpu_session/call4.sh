#!/usr/bin/env bash
# GPU session, call 4 (about 9 min), after call 6's float32 calibration (carry .gpucache: warm machines drop it):
# issue 26's "fp16 never slower than fp32". tools/zoo_h200.py calibrates float16 (a third of its budget), then
# runs the default zoo in float16 with convroute in float32 and the CUDA graph timed in the same rounds (the /fp32
# column: <= 1.0 on every model).
#   source .gl/prelude.sh && bash tools/gpu_session/call4.sh      (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
git log --oneline -1 > "$OUT/head.txt"
timeout 560 python3 tools/zoo_h200.py --dtype float16 --compare torch-cuda-graph,convroute-float32 --budget 540 \
  2>&1 | tail -70 | tee "$OUT/zoo_fp16.txt"
