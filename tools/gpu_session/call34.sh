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
fp16_zoo
