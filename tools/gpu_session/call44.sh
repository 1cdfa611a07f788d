#!/usr/bin/env bash
# GPU session, call 44 (<= $LIMIT s, default 300; carry .gl .whl .gpucache): where the rest of a call beyond its GPU
# pass goes, on the GPU's own clock inside the real calls (tools/call_timeline.py: upload copy, the pass as the call
# ran it, read-back copy, host remainder), fp32 and fp16, on the models that trail the graph or fp32.
#   source .gl/prelude.sh && bash tools/gpu_session/call44.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call44; LIMIT=${LIMIT:-300}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
for model in mobilenet_v2 squeezenet1_1 shufflenet_v2_x0_5 timm:lcnet_050; do
  for dtype in float32 float16; do
    timeout "$(cap 40)" python3 tools/call_timeline.py $model --dtype $dtype --rounds 60 > "$R/timeline_${model#timm:}_$dtype.txt" 2>&1
    grep -v "Warning\|warnings.warn\|return cls" "$R/timeline_${model#timm:}_$dtype.txt" | tail -11
  done
  pack
done
