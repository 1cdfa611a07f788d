#!/usr/bin/env bash
# GPU session, call 37 (<= $LIMIT s, default 300; carry .gl .whl .gpucache): CONVROUTE_HOST_CLOSE_CALLS (on trial,
# session 29) on and off in one process on the host-bound models that trail the CUDA graph, fp32 then fp16,
# calibrated (tools/flag_ab.py: dispatches, errors, call and GPU pass per arm). With the flag on, candidates
# predicted within two dispatches' encoding of the best are measured and charged per dispatch; its first compile
# measures them (autotune file), so compile times run longer once. Calibrates when the cache has none valid.
#   source .gl/prelude.sh && bash tools/gpu_session/call37.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call37; LIMIT=${LIMIT:-300}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
MODELS="squeezenet1_1 mobilenet_v3_small timm:lcnet_050 shufflenet_v2_x0_5 mobilenet_v2 timm:convnext_atto"
for dtype in float32 float16; do
  timeout "$(cap 130)" python3 tools/flag_ab.py CONVROUTE_HOST_CLOSE_CALLS $MODELS --policy calibrated \
    --rounds 60 --dtype $dtype > "$R/host_close_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/host_close_$dtype.txt" | tail -16
  pack
done
