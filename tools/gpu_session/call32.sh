#!/usr/bin/env bash
# GPU session, call 32 (a first call when only one may come, <= $LIMIT s, default 590): issue 26's checks in one
# call. The changed kernels' tests (f16 convs reading the float32 input, odd-length f16 views, the softmax-weighted
# sum), fp32 and fp16 calibrations (50 s budgets), the conv fuzz (100 cases; f16 cases draw the float32 input
# half the time), then the default zoo in fp16 against convroute in fp32, the fastest models first (the host-bound
# ones, where fp16 gains least; session 26's loser lcnet_050 leads) until the limit. call27.sh follows with the
# fp32 zoo against the CUDA graph and mobilenet_v2 in five processes (`tar xzf call32.tgz .gpucache` first).
#   source .gl/prelude.sh && bash tools/gpu_session/call32.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call32; LIMIT=${LIMIT:-590}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 50)" python3 -m pytest -q -p no:cacheprovider tests/test_float32_input.py tests/test_fuse_reductions.py \
  tests/test_ops_reduce.py tests/test_fuse_views.py -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
calibrations 50 75
pack
CONVROUTE_FUZZ=100 timeout "$(cap 45)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
pack
fp16_zoo
