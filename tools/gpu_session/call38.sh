#!/usr/bin/env bash
# GPU session, call 38 (<= $LIMIT s, default 400; carry .gl .whl .gpucache): GEMM K splits against one-launch
# forms (tools/split_ab.py: as shipped, K slices, the tile over all of K) on the host-bound models that trail the
# CUDA graph, fp32 then fp16, calibrated; then CONVROUTE_HOST_CLOSE_CALLS on/off (call37's A/B) with what is left.
#   source .gl/prelude.sh && bash tools/gpu_session/call38.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call38; LIMIT=${LIMIT:-400}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
MODELS="squeezenet1_1 mobilenet_v2 mobilenet_v3_small timm:lcnet_050 shufflenet_v2_x0_5 timm:convnext_atto
  regnet_y_400mf"
for dtype in float32 float16; do
  timeout "$(cap 140)" python3 tools/split_ab.py $MODELS --policy calibrated --rounds 60 --dtype $dtype \
    > "$R/splits_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/splits_$dtype.txt" | tail -12
  pack
done
timeout "$(cap 130)" python3 tools/flag_ab.py CONVROUTE_HOST_CLOSE_CALLS squeezenet1_1 mobilenet_v3_small \
  timm:lcnet_050 shufflenet_v2_x0_5 mobilenet_v2 timm:convnext_atto --policy calibrated --rounds 60 \
  > "$R/host_close_float32.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/host_close_float32.txt" | tail -12
