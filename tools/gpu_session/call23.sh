#!/usr/bin/env bash
# GPU session, call 23 (<= $LIMIT s, default 585; carry .gl .whl): call22.sh's fp16 work in one call on a fresh
# machine (an H100 while no H200 is lent): session 24's op kernels' tests, short calibrations in both dtypes, the
# fp16 zoo of six (order rotating), CONVROUTE_HOST_INPUT_CAST on / off, the fuzz (default, then both depthwise
# trials on) and CONVROUTE_DEPTHWISE_F32_SUMS on / off in fp16.
#   source .gl/prelude.sh && bash tools/gpu_session/call23.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call23; LIMIT=${LIMIT:-585}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 60)" python3 -m pytest -q -p no:cacheprovider tests/test_scatter.py tests/test_ops_reduce.py \
  tests/test_concat_view.py tests/test_fuse_squeeze_excite.py tests/test_layer_scale.py tests/test_bmm.py \
  -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
for dtype in float32 float16; do
  timeout "$(cap 70)" python3 -m convroute.cli.main calibrate --dtype $dtype --selftest-cases 0 --budget 45 \
    --no-progress > "$R/calibrate_$dtype.txt" 2>&1
  head -3 "$R/calibrate_$dtype.txt"
done
pack
timeout "$(cap 140)" python3 -m convroute.cli.main zoo timm:resnet50d resnet18 mobilenet_v2 timm:lcnet_050 \
  squeezenet1_1 convnext_tiny --dtype float16 --policy calibrated --compare convroute-float32,torch-cuda-graph \
  --runs 30 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
pack
timeout "$(cap 80)" python3 tools/flag_ab.py CONVROUTE_HOST_INPUT_CAST timm:lcnet_050 mobilenet_v2 squeezenet1_1 \
  resnet18 --policy calibrated --rounds 30 --dtype float16 > "$R/ab_host_cast.txt" 2>&1
tail -7 "$R/ab_host_cast.txt"
pack
CONVROUTE_FUZZ=100 timeout "$(cap 50)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
CONVROUTE_DEPTHWISE_CONSTANTS=1 CONVROUTE_DEPTHWISE_F32_SUMS=1 CONVROUTE_FUZZ=100 timeout "$(cap 50)" python3 -m \
  pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_depthwise_cpu.py -k "test_fuzz and float or baked \
  or f32_sums" -s > "$R/fuzz_depthwise_trials.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz_depthwise_trials.txt" | tail -6
pack
timeout "$(cap 75)" python3 tools/flag_ab.py CONVROUTE_DEPTHWISE_F32_SUMS mobilenet_v2 timm:lcnet_050 \
  efficientnet_b0 timm:mobilenetv3_large_100 --policy calibrated --rounds 30 --dtype float16 \
  > "$R/ab_DEPTHWISE_F32_SUMS.txt" 2>&1
tail -7 "$R/ab_DEPTHWISE_F32_SUMS.txt"
