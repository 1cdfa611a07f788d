#!/usr/bin/env bash
# GPU session, call 22 (after call21.sh, <= $LIMIT s, default 585; carry .gl .whl .gpucache): issue 26's fp16
# item with both dtypes calibrated (the fp16 zoo of six against convroute-float32 and the fp16 graph, engines'
# order rotating per round), the host-side input cast on / off (CONVROUTE_HOST_INPUT_CAST), the differential
# fuzz, then the two depthwise trial switches (CONVROUTE_DEPTHWISE_F32_SUMS, CONVROUTE_DEPTHWISE_CONSTANTS): the
# fuzz with both on, whole fp16 models with each on / off. call24.sh follows where device time is left.
#   source .gl/prelude.sh && bash tools/gpu_session/call22.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call22; LIMIT=${LIMIT:-585}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 150)" python3 -m convroute.cli.main zoo timm:resnet50d resnet18 mobilenet_v2 timm:lcnet_050 \
  squeezenet1_1 convnext_tiny --dtype float16 --policy calibrated --compare convroute-float32,torch-cuda-graph \
  --runs 30 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
pack
timeout "$(cap 90)" python3 tools/flag_ab.py CONVROUTE_HOST_INPUT_CAST timm:lcnet_050 mobilenet_v2 squeezenet1_1 \
  resnet18 --policy calibrated --rounds 40 --dtype float16 > "$R/ab_host_cast.txt" 2>&1
tail -7 "$R/ab_host_cast.txt"
pack
CONVROUTE_FUZZ=150 timeout "$(cap 75)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
CONVROUTE_DEPTHWISE_CONSTANTS=1 CONVROUTE_DEPTHWISE_F32_SUMS=1 CONVROUTE_FUZZ=150 timeout "$(cap 75)" python3 -m \
  pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_depthwise_cpu.py -k "test_fuzz and float or baked \
  or f32_sums" -s > "$R/fuzz_depthwise_trials.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz_depthwise_trials.txt" | tail -6
pack
for flag in CONVROUTE_DEPTHWISE_F32_SUMS CONVROUTE_DEPTHWISE_CONSTANTS; do
  timeout "$(cap 80)" python3 tools/flag_ab.py $flag mobilenet_v2 timm:lcnet_050 efficientnet_b0 \
    timm:mobilenetv3_large_100 --policy calibrated --rounds 30 --dtype float16 > "$R/ab_${flag#CONVROUTE_}.txt" 2>&1
  tail -7 "$R/ab_${flag#CONVROUTE_}.txt"
  pack
done
