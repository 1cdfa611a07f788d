#!/usr/bin/env bash
# GPU session, call 41 (<= $LIMIT s, default 100; carry .gl .whl .gpucache from call 39): implicit_gemm's B gather
# unrolled against the loop (tools/gather_ab.py) on the fp16 losers with 3x3 implicit_gemm convs, fp16 then fp32.
#   source .gl/prelude.sh && bash tools/gpu_session/call41.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call41; LIMIT=${LIMIT:-100}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
for dtype in float16 float32; do
  timeout "$(cap 45)" python3 tools/gather_ab.py squeezenet1_1 timm:hrnet_w18_small --policy calibrated --rounds 40 \
    --dtype $dtype > "$R/gather_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/gather_$dtype.txt" | tail -5
  pack
done
