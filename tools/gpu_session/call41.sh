#!/usr/bin/env bash
# GPU session, call 41 (<= $LIMIT s, default 330; carry .gl .whl .gpucache): calibrates fp32 and fp16 when the cache
# has none for this kernel hash (fd807d1e1882; .gpucache holds call 39's, restamped: see NOTES), then
# implicit_gemm's B gather unrolled against the loop (tools/gather_ab.py) on fp16 losers with 3x3 implicit_gemm
# convs, fp16 then fp32, then summed convs on and off (session 30's frontend/summed_convs.py) on the training forms
# of RepVGG, MobileOne and FastViT.
#   source .gl/prelude.sh && bash tools/gpu_session/call41.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call41; LIMIT=${LIMIT:-330}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
pack
for dtype in float16 float32; do
  timeout "$(cap 60)" python3 tools/gather_ab.py squeezenet1_1 timm:hrnet_w18_small --policy calibrated --rounds 40 \
    --dtype $dtype > "$R/gather_$dtype.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/gather_$dtype.txt" | tail -5
  pack
done
timeout "$(cap 90)" python3 tools/flag_ab.py CONVROUTE_SUMMED_CONVS timm:repvgg_a2 timm:mobileone_s0 timm:fastvit_t8 \
  --policy calibrated --rounds 40 > "$R/summed.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/summed.txt" | tail -6
