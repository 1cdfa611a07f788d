#!/usr/bin/env bash
# GPU session, call 40 (<= $LIMIT s, default 290; carry .gl .whl .gpucache from call 39): mobilenet_v2 against the
# CUDA graph in five fresh processes, then why fp16's call trails fp32's by ~10 us of host residual (call minus GPU
# pass) on most zoo models (call 34): host_phases.py on lcnet_050 in both dtypes, then squeezenet1_1 per node
# (dtype_nodes.py: where its fp16 GPU pass loses after the slice_plan change).
#   source .gl/prelude.sh && bash tools/gpu_session/call40.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call40; LIMIT=${LIMIT:-290}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
for dtype in float32 float16; do
  timeout "$(cap 40)" python3 tools/host_phases.py timm:lcnet_050 224 calibrated 300 - $dtype \
    > "$R/host_phases_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/host_phases_$dtype.txt" | tail -22
done
pack
timeout "$(( LIMIT - SECONDS - 8 ))" python3 tools/gpu_session/dtype_nodes.py squeezenet1_1 224 3 > "$R/nodes.txt" 2>&1
tail -30 "$R/nodes.txt"
