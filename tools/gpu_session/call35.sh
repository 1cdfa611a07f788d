#!/usr/bin/env bash
# GPU session, call 35 (<= $LIMIT s, default 300; carry .gl .whl .gpucache from call 34): the four default-zoo
# models call 34's limit cut, fp16 against convroute fp32, then shufflenet_v2_x0_5's nodes timed alone per dtype
# (its fp16 GPU pass ran 0.378 vs 0.353 ms with as many dispatches as fp32).
#   source .gl/prelude.sh && bash tools/gpu_session/call35.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call35; LIMIT=${LIMIT:-300}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 170)" python3 -m convroute.cli.main zoo timm:regnety_016 efficientnet_v2_s timm:xception41 \
  timm:inception_v4 --dtype float16 --policy calibrated --compare convroute-float32 --runs 20 --no-progress \
  --json "$R/zoo_fp16_last4.json" > "$R/zoo_fp16_last4.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/zoo_fp16_last4.txt" | tail -14
pack
timeout "$(( LIMIT - SECONDS - 8 ))" python3 tools/gpu_session/dtype_nodes.py shufflenet_v2_x0_5 224 3 \
  > "$R/nodes_shufflenet.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/nodes_shufflenet.txt" | tail -30
