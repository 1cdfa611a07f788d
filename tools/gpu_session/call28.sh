#!/usr/bin/env bash
# GPU session, call 28 (after call27.sh, <= $LIMIT s, default 300; carry .gl .whl .gpucache): the tests call26.sh's
# 45 s cut off (layer scale, bmm, reduction chains), then both depthwise trial switches in fp16 on the two models
# whose fp16 lost or tied in call26 (timm lcnet_050 1.06x, mobilenet_v2 0.99x convroute fp32).
#   source .gl/prelude.sh && bash tools/gpu_session/call28.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call28; LIMIT=${LIMIT:-300}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 70)" python3 -m pytest -q -p no:cacheprovider tests/test_fuse_reductions.py tests/test_layer_scale.py \
  tests/test_bmm.py -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
pack
for flag in CONVROUTE_DEPTHWISE_F32_SUMS CONVROUTE_DEPTHWISE_CONSTANTS; do
  timeout "$(cap 100)" python3 tools/flag_ab.py $flag timm:lcnet_050 mobilenet_v2 --policy calibrated --rounds 40 \
    --dtype float16 > "$R/ab_${flag#CONVROUTE_}.txt" 2>&1
  tail -4 "$R/ab_${flag#CONVROUTE_}.txt"
  pack
done
