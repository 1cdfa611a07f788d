#!/usr/bin/env bash
# GPU session, call 48 (<= $LIMIT s, default 80; carry .gl .whl .gpucache): where hrnet_w18_small's fp16 pass loses to
# fp32's (call 47: 1.207 against 1.150 ms, the whole loss in the pass), node by node (dtype_nodes.py).
#   source .gl/prelude.sh && bash tools/gpu_session/call48.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call48; LIMIT=${LIMIT:-80}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
timeout "$(( LIMIT - SECONDS - 6 ))" python3 -u tools/gpu_session/dtype_nodes.py timm:hrnet_w18_small 224 2 > "$R/nodes.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/nodes.txt" | tail -30
