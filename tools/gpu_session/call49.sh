#!/usr/bin/env bash
# GPU session, call 49 (<= $LIMIT s, default 240; carry .gl .whl .gpucache): implicit_gemm's B gather reading f16 inputs
# two to a u32 word ("packed f16", tools/gather_ab.py; bit-identical to the loop on lavapipe) against the loop and
# the unrolled form, fp16, on the models whose fp16 pass trails fp32's (session 31, calls 47-48: ~10 % a 3x3
# implicit_gemm conv); fp32 on squeezenet1_1 as the control (the packed arm changes nothing in fp32).
#   source .gl/prelude.sh && bash tools/gpu_session/call49.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call49; LIMIT=${LIMIT:-240}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
for model in squeezenet1_1 timm:hrnet_w18_small shufflenet_v2_x0_5; do
  timeout "$(cap 60)" python3 tools/gather_ab.py $model --policy calibrated --rounds 40 --dtype float16 \
    > "$R/packed_${model#timm:}.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls\|done$" "$R/packed_${model#timm:}.txt" | tail -3
  pack
done
timeout "$(cap 40)" python3 tools/gather_ab.py squeezenet1_1 --policy calibrated --rounds 40 --dtype float32 \
  > "$R/packed_control_f32.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls\|done$" "$R/packed_control_f32.txt" | tail -3
