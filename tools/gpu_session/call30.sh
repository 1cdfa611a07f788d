#!/usr/bin/env bash
# GPU session, call 30 (after a call that left both calibrations in .gpucache, <= $LIMIT s, default 170; carry
# .gl .whl .gpucache): the layer-scale fold on / off and depthwise constants in fp32 (on trial) on the zoo's
# GPU-bound depthwise models (the A/Bs session 26's call27.sh held).
#   source .gl/prelude.sh && bash tools/gpu_session/call30.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call30; LIMIT=${LIMIT:-170}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 60)" python3 tools/flag_ab.py CONVROUTE_LAYER_SCALE convnext_tiny timm:convnext_atto \
  --policy calibrated --rounds 30 > "$R/ab_layer_scale.txt" 2>&1
tail -5 "$R/ab_layer_scale.txt"
pack
timeout "$(cap 90)" python3 tools/flag_ab.py CONVROUTE_DEPTHWISE_CONSTANTS convnext_tiny timm:xception41 \
  mobilenet_v2 --policy calibrated --rounds 20 > "$R/ab_DEPTHWISE_CONSTANTS_fp32.txt" 2>&1
tail -6 "$R/ab_DEPTHWISE_CONSTANTS_fp32.txt"
