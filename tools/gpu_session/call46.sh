#!/usr/bin/env bash
# GPU session, call 46 (<= $LIMIT s, default 170; carry .gl .whl .gpucache): tools/call_timeline.py (fixed: call 45
# hung resolving timestamps no pass wrote) on mobilenet_v2 and squeezenet1_1, fp32 and fp16.
#   source .gl/prelude.sh && bash tools/gpu_session/call46.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call46; LIMIT=${LIMIT:-170}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
for model in mobilenet_v2 squeezenet1_1; do
  for dtype in float32 float16; do
    timeout "$(cap 38)" python3 -u tools/call_timeline.py $model --dtype $dtype --rounds 60 --hang-s 34 \
      > "$R/timeline_${model}_$dtype.txt" 2>&1
    grep -v "Warning\|warnings.warn\|return cls\|^compiled\|^peer\|^rounds" "$R/timeline_${model}_$dtype.txt" | tail -11
    pack
  done
done
