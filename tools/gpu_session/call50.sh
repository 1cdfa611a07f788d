#!/usr/bin/env bash
# GPU session, call 50 (<= $LIMIT s, default 240; carry .gl .whl .gpucache): fp16's GEMM inner loop against fp32
# (tools/f16_gemm_ab.py: weights loaded as vec4<f16> without the trip through f32, f16 sums added to the f32
# totals every 2 K tiles instead of every one) on the models whose fp16 pass trails fp32's (session 31).
#   source .gl/prelude.sh && bash tools/gpu_session/call50.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call50; LIMIT=${LIMIT:-240}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
for model in squeezenet1_1 shufflenet_v2_x0_5 timm:hrnet_w18_small; do
  timeout "$(cap 70)" python3 tools/f16_gemm_ab.py $model --policy calibrated --rounds 40 \
    > "$R/f16_${model#timm:}.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls\|done$" "$R/f16_${model#timm:}.txt" | tail -3
  pack
done
