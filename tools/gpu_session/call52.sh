#!/usr/bin/env bash
# GPU session, call 52 (<= $LIMIT s, default 560; carry .gl .whl .gpucache): issue 26's done-when at HEAD (kernel
# hash fd807d1e1882, calibrations on file): mobilenet_v2 against the CUDA graph in five fresh processes, then the
# default zoo against the graph with what is left (tools/zoo_h200.py, fastest part first).
#   source .gl/prelude.sh && bash tools/gpu_session/call52.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call52; LIMIT=${LIMIT:-560}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
graph_zoo
