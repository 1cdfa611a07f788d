#!/usr/bin/env bash
# GPU session, call 41 (<= $LIMIT s, default 260; carry .gl .whl .gpucache): calibrates fp32 and fp16 when the cache
# has none for this kernel hash (fd807d1e1882; .gpucache holds call 39's, restamped: see NOTES), then
# implicit_gemm's B gather unrolled against the loop (tools/gather_ab.py) on fp16 losers with 3x3 implicit_gemm
# convs, fp16 then fp32.
#   source .gl/prelude.sh && bash tools/gpu_session/call41.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call41; LIMIT=${LIMIT:-260}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
pack
for dtype in float16 float32; do
  timeout "$(cap 60)" python3 tools/gather_ab.py squeezenet1_1 timm:hrnet_w18_small --policy calibrated --rounds 40 \
    --dtype $dtype > "$R/gather_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/gather_$dtype.txt" | tail -5
  pack
done
