#!/usr/bin/env bash
# GPU session, call 34 (<= $LIMIT s, default 580; carry .gl .whl .gpucache): the whole default zoo in fp16
# against convroute fp32, fastest model first, after session 29's two changes: zoo models' batch norms settled on
# random images (no fp16 overflow: cspdarknet53, repvgg_a2, res2net50 and inception_v3 gave inf before) and each
# measured dispatch charged its host encoding (autotune entries without dispatch counts are timed again while
# compiling, so compile times run longer this once). Calibrates only when the cache has no valid calibration.
#   source .gl/prelude.sh && bash tools/gpu_session/call34.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call34; LIMIT=${LIMIT:-580}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
timeout "$(cap 40)" python3 -m pytest -q -p no:cacheprovider tests/test_refine.py -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -4
MODELS="timm:lcnet_050 alexnet squeezenet1_1 shufflenet_v2_x0_5 mnasnet0_5 timm:mobilenetv4_conv_small mobilenet_v2
  resnet18 mobilenet_v3_small timm:convnext_atto timm:mobilenetv3_large_100 vgg11 timm:dla34 googlenet timm:resnest14d
  timm:ecaresnet26t timm:ghostnet_100 regnet_x_400mf timm:resnet50d efficientnet_b0 timm:efficientnet_b0
  timm:rexnet_100 resnext50_32x4d timm:mixnet_s timm:repvgg_a2 timm:hrnet_w18_small regnet_y_400mf
  timm:cspdarknet53 wide_resnet50_2 convnext_tiny inception_v3 timm:tresnet_m densenet121 timm:res2net50_14w_8s
  timm:regnety_016 efficientnet_v2_s timm:xception41 timm:inception_v4"
timeout "$(( LIMIT - SECONDS - 10 ))" python3 -m convroute.cli.main zoo $MODELS --dtype float16 --policy calibrated \
  --compare convroute-float32 --runs 20 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/zoo_fp16.txt" | tail -52
