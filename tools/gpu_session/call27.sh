#!/usr/bin/env bash
# GPU session, call 27 (right after call26.sh on the same machine, <= $LIMIT s, default 470; carry .gl .whl
# .gpucache): the default zoo against the CUDA graph (tools/zoo_h200.py) and mobilenet_v2 in five processes on
# call26's fp32 calibration, then where the zoo's worst model (resnest14d) spends its GPU pass (top_nodes.py).
#   source .gl/prelude.sh && bash tools/gpu_session/call27.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call27; LIMIT=${LIMIT:-470}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
OUT=$R timeout "$(cap 310)" python3 tools/zoo_h200.py --no-calibrate --compare torch-cuda-graph --budget 290 \
  > "$R/zoo.txt" 2>&1
tail -48 "$R/zoo.txt"
pack
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
timeout "$(cap 40)" python3 tools/gpu_session/top_nodes.py timm:resnest14d 224 9 20 > "$R/top_resnest14d.txt" 2>&1
tail -22 "$R/top_resnest14d.txt"
