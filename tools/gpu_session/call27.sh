#!/usr/bin/env bash
# GPU session, call 27 (right after call26.sh on the same machine, <= $LIMIT s, default 540; carry .gl .whl
# .gpucache): the default zoo against the CUDA graph (tools/zoo_h200.py) and mobilenet_v2 in five processes on
# call26's fp32 calibration, then the layer-scale fold on / off and depthwise constants in fp32 (on trial) on the
# zoo's GPU-bound depthwise models. Session 26 ran its first part on an H100; the issue names the H200.
#   source .gl/prelude.sh && bash tools/gpu_session/call27.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call27; LIMIT=${LIMIT:-540}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
OUT=$R timeout "$(cap 230)" python3 tools/zoo_h200.py --no-calibrate --compare torch-cuda-graph --budget 210 \
  > "$R/zoo.txt" 2>&1
tail -48 "$R/zoo.txt"
pack
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
timeout "$(cap 60)" python3 tools/flag_ab.py CONVROUTE_LAYER_SCALE convnext_tiny timm:convnext_atto \
  --policy calibrated --rounds 30 > "$R/ab_layer_scale.txt" 2>&1
tail -5 "$R/ab_layer_scale.txt"
pack
timeout "$(cap 90)" python3 tools/flag_ab.py CONVROUTE_DEPTHWISE_CONSTANTS convnext_tiny timm:xception41 \
  mobilenet_v2 --policy calibrated --rounds 20 > "$R/ab_DEPTHWISE_CONSTANTS_fp32.txt" 2>&1
tail -6 "$R/ab_DEPTHWISE_CONSTANTS_fp32.txt"
