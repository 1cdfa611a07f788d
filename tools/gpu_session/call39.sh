#!/usr/bin/env bash
# GPU session, call 39 (<= $LIMIT s, default 570; carry .gl .whl .gpucache): after session 30's slice_plan change
# (split GEMM products under SLICE_MACS take as many K slices as fit: one launch; the kernel hash moves, so this
# calibrates fp32 and fp16 first), the conv fuzz (100 cases), mobilenet_v2 against the CUDA graph in five fresh
# processes, then the default zoo against the graph with what is left (tools/zoo_h200.py, fastest part first).
#   source .gl/prelude.sh && bash tools/gpu_session/call39.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call39; LIMIT=${LIMIT:-570}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
pack
CONVROUTE_FUZZ=100 timeout "$(cap 50)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
graph_zoo
