#!/usr/bin/env bash
# GPU session, call 45 (<= $LIMIT s, default 150; carry .gl .whl .gpucache): call 44's tools/call_timeline.py runs
# all ended at their time cap with nothing written: mobilenet_v2 in both dtypes again, unbuffered, with every
# thread's stack dumped before the cap.
#   source .gl/prelude.sh && bash tools/gpu_session/call45.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call45; LIMIT=${LIMIT:-150}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
for dtype in float32 float16; do
  timeout "$(cap 60)" python3 -u tools/call_timeline.py mobilenet_v2 --dtype $dtype --rounds 60 --hang-s 50 \
    > "$R/timeline_mobilenet_v2_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/timeline_mobilenet_v2_$dtype.txt" | tail -40
  pack
done
