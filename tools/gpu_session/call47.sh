#!/usr/bin/env bash
# GPU session, call 47 (<= $LIMIT s, default 150; carry .gl .whl .gpucache): tools/call_timeline.py on two models whose
# fp16 trailed fp32 beyond the spread (session 30), fp32 and fp16: is the loss in the pass or outside it?
#   source .gl/prelude.sh && bash tools/gpu_session/call47.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call47; LIMIT=${LIMIT:-150}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
for model in shufflenet_v2_x0_5 timm:hrnet_w18_small; do
  for dtype in float32 float16; do
    timeout "$(cap 34)" python3 -u tools/call_timeline.py $model --dtype $dtype --hang-s 30 --rounds 40 \
      > "$R/timeline_${model#timm:}_$dtype.txt" 2>&1
    grep -v "Warning\|warnings.warn\|return cls\|^compiled\|^peer\|^rounds" "$R/timeline_${model#timm:}_$dtype.txt" | tail -11
    pack
  done
done
