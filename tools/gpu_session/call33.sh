#!/usr/bin/env bash
# GPU session, call 33 (<= $LIMIT s, default 560; carry .gl .whl .gpucache): why fp16 loses to fp32 on
# host-bound zoo models. Calibrates only when the cache holds no valid calibration for this card (session 28's
# H100 files match kernel hash 2172de0d0f4d). Then dtype_plans.py on session 28's six losers (each plan's
# dispatches, the nodes that differ, call / GPU pass / host per dtype), then the zoo's other 20 models in fp16
# against convroute fp32 (session 28 ran the first 18), then the six losers again in the zoo's form.
#   source .gl/prelude.sh && bash tools/gpu_session/call33.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call33; LIMIT=${LIMIT:-560}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
LOSERS="shufflenet_v2_x0_5 timm:convnext_atto timm:lcnet_050 timm:mobilenetv4_conv_small mobilenet_v3_small mnasnet0_5"
timeout "$(cap 120)" python3 tools/gpu_session/dtype_plans.py $LOSERS > "$R/dtype_plans.txt" 2>&1
grep -v Warning "$R/dtype_plans.txt" | grep -v "warnings.warn\|return cls" | tail -60
pack
REST="timm:resnet50d efficientnet_b0 timm:efficientnet_b0 timm:rexnet_100 resnext50_32x4d timm:mixnet_s
  timm:repvgg_a2 timm:hrnet_w18_small regnet_y_400mf timm:cspdarknet53 wide_resnet50_2 convnext_tiny inception_v3
  timm:tresnet_m densenet121 timm:res2net50_14w_8s timm:regnety_016 efficientnet_v2_s timm:xception41
  timm:inception_v4"
timeout "$(cap 330)" python3 -m convroute.cli.main zoo $REST --dtype float16 --policy calibrated \
  --compare convroute-float32 --runs 20 --no-progress --json "$R/zoo_fp16_rest.json" > "$R/zoo_fp16_rest.txt" 2>&1
grep -v Warning "$R/zoo_fp16_rest.txt" | grep -v "warnings.warn\|return cls" | tail -34
pack
timeout "$(( LIMIT - SECONDS - 8 ))" python3 -m convroute.cli.main zoo $LOSERS --dtype float16 --policy calibrated \
  --compare convroute-float32 --runs 20 --no-progress --json "$R/zoo_fp16_losers.json" > "$R/zoo_fp16_losers.txt" 2>&1
grep -v Warning "$R/zoo_fp16_losers.txt" | grep -v "warnings.warn\|return cls" | tail -16
