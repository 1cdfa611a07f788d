#!/usr/bin/env bash
# GPU session, call 29 (any time, <= $LIMIT s, default 170; carry .gl .whl): squeeze-excitation blocks of the five
# SE models alone, one dispatch against two passes (tools/squeeze_excite_bench.py), to find the block size past
# which the one-dispatch form loses (session 26: timm mobilenetv3_large_100 1.048x with it, 960 -> 240 squeezes);
# then where squeezenet1_1 (the zoo's second worst against the graph) spends its GPU pass.
#   source .gl/prelude.sh && bash tools/gpu_session/call29.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call29; LIMIT=${LIMIT:-170}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 100)" python3 tools/squeeze_excite_bench.py --rounds 20 > "$R/se_bench.txt" 2>&1
tail -40 "$R/se_bench.txt"
pack
timeout "$(cap 40)" python3 tools/gpu_session/top_nodes.py squeezenet1_1 224 9 20 > "$R/top_squeezenet1_1.txt" 2>&1
tail -22 "$R/top_squeezenet1_1.txt"
