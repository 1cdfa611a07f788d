#!/usr/bin/env bash
# GPU session, call 31 (a short first call when little device time is left, <= $LIMIT s, default 260): the changed
# kernels' tests, fp32 and fp16 calibrations at 40 s budgets, then the fp16 zoo's three closest models (lcnet_050,
# squeezenet1_1, mobilenet_v2: 0.99-1.06x in session 26) against convroute in fp32. call26.sh is the full form.
#   source .gl/prelude.sh && bash tools/gpu_session/call31.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call31; LIMIT=${LIMIT:-260}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 40)" python3 -m pytest -q -p no:cacheprovider tests/test_fuse_reductions.py tests/test_ops_reduce.py \
  -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
calibrations 40 60
pack
timeout "$(cap 90)" python3 -m convroute.cli.main zoo timm:lcnet_050 squeezenet1_1 mobilenet_v2 --dtype float16 \
  --policy calibrated --compare convroute-float32 --runs 30 --no-progress --json "$R/zoo_fp16.json" \
  > "$R/zoo_fp16.txt" 2>&1
tail -9 "$R/zoo_fp16.txt"
