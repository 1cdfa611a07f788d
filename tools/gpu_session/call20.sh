#!/usr/bin/env bash
# GPU session, call 20 (<= $LIMIT s, default 370; after call19.sh, carry .gl .whl .gpucache): session 24's new
# op kernels on the GPU (scatter-add, variance: lavapipe and SwiftShader only so far), then the trial switch
# CONVROUTE_DEPTHWISE_CONSTANTS (session 24: depthwise's WGSL with the layer's shape as literals, so its loops
# unroll and its divisions fold; lavapipe-only checks so far). First the fuzz with it on (a kernel change: its
# GPU count decides), then whole models on / off in both dtypes, depthwise-heavy ones.
#   source .gl/prelude.sh && bash tools/gpu_session/call20.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call20; LIMIT=${LIMIT:-370}; source "$(dirname "$0")/session.sh"
timeout "$(cap 50)" python3 -m pytest -q -p no:cacheprovider tests/test_scatter.py tests/test_ops_reduce.py \
  tests/test_concat_view.py -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
CONVROUTE_DEPTHWISE_CONSTANTS=1 CONVROUTE_FUZZ=150 timeout "$(cap 80)" python3 -m pytest -q -p no:cacheprovider \
  tests/test_fuzz.py tests/test_depthwise_cpu.py -k "test_fuzz and float or baked" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
pack
for dtype in float32 float16; do
  timeout "$(cap 110)" python3 tools/flag_ab.py CONVROUTE_DEPTHWISE_CONSTANTS mobilenet_v2 timm:lcnet_050 \
    efficientnet_b0 timm:mobilenetv3_large_100 --policy calibrated --rounds 40 --dtype $dtype \
    > "$R/ab_$dtype.txt" 2>&1
  tail -7 "$R/ab_$dtype.txt"
  pack
done
