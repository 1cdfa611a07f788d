#!/usr/bin/env bash
# GPU session, call 13 (<= $LIMIT s, default 600; carry .gl .whl .gpucache): the differential fuzz (both dtypes,
# $FUZZ cases, default 300) with the checker that lets sums rounded across softplus's jump take either side
# (call 10/12's 16 wrong runs, switch on or off alike), then call11.sh in what is left. Pass
# CONVROUTE_WINOGRAD_F16_SCALE=1 in front to run all of it with that switch on.
#   source .gl/prelude.sh && bash tools/gpu_session/call13.sh   (results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call13; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
LIMIT=${LIMIT:-600}
source "$(dirname "$0")/limits.sh"
{ git log --oneline -1; env | grep ^CONVROUTE_; } > "$R/head.txt"
CONVROUTE_FUZZ=${FUZZ:-300} timeout "$(cap 170)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -8
for i in 1 2 3; do  # call 10: it failed once, its assertion cut off
  timeout "$(cap 30)" python3 -m pytest -q -p no:cacheprovider tests/test_fp16.py -k test_conv_command_runs_fp16 \
    > "$R/conv_command_$i.txt" 2>&1; tail -1 "$R/conv_command_$i.txt"
done
tar czf "$OUT/call13.tgz" -C "${R%/*}" call13
LIMIT=$((LIMIT - SECONDS)) bash "$(dirname "$0")/call11.sh"
