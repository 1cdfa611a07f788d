#!/usr/bin/env bash
# GPU session, call 29 (any time, <= $LIMIT s, default 120; carry .gl .whl): squeeze-excitation blocks of the five
# SE models alone, one dispatch against two passes (tools/squeeze_excite_bench.py), to find the block size past
# which the one-dispatch form loses (session 26: timm mobilenetv3_large_100 1.048x with it, 960 -> 240 squeezes).
#   source .gl/prelude.sh && bash tools/gpu_session/call29.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call29; LIMIT=${LIMIT:-120}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 100)" python3 tools/squeeze_excite_bench.py --rounds 20 > "$R/se_bench.txt" 2>&1
tail -40 "$R/se_bench.txt"
