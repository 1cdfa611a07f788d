#!/usr/bin/env bash
# GPU session, call 14 (<= $LIMIT s, default 230; carry .gl .whl .gpucache): what call 10 cut off (its bmm tests
# ran past their cap after the float32 fuzz): CONVROUTE_BMM=1 with 100 random shapes a dtype, and the wide
# convs' and conv3d's tests; then where float16 loses to float32 node by node on two host-bound models.
#   source .gl/prelude.sh && bash tools/gpu_session/call14.sh   (results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call14; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
trap 'tar czf "$OUT/call14.tgz" -C "${R%/*}" call14' EXIT
LIMIT=${LIMIT:-230}
source "$(dirname "$0")/limits.sh"
git log --oneline -1 > "$R/head.txt"
CONVROUTE_BMM=1 CONVROUTE_BMM_FUZZ=100 timeout "$(cap 130)" python3 -m pytest -q -p no:cacheprovider \
  tests/test_bmm.py tests/test_wide_convs.py tests/test_conv3d.py -s > "$R/bmm.txt" 2>&1
grep -E "cases|WRONG|passed|failed|Error" "$R/bmm.txt" | tail -8
for model in mobilenet_v2 timm:lcnet_050; do
  timeout "$(cap 45)" python3 tools/gpu_session/dtype_nodes.py $model > "$R/nodes_${model#timm:}.txt" 2>&1
  head -22 "$R/nodes_${model#timm:}.txt"
done
