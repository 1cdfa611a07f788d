#!/usr/bin/env bash
# GPU session, call 36 (<= $LIMIT s, default 170; carry .gl .whl .gpucache from call 35): after session 29's
# dispatch charge (fp32 routing of close calls changes too), mobilenet_v2 against the CUDA graph in five fresh
# processes, then session 26's three worst zoo models against the graph.
#   source .gl/prelude.sh && bash tools/gpu_session/call36.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call36; LIMIT=${LIMIT:-170}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
timeout "$(( LIMIT - SECONDS - 8 ))" python3 -m convroute.cli.main zoo timm:resnest14d timm:xception41 convnext_tiny \
  --policy calibrated --compare torch-cuda-graph --runs 20 --no-progress --json "$R/zoo_graph3.json" \
  > "$R/zoo_graph3.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/zoo_graph3.txt" | tail -12
