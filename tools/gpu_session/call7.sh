#!/usr/bin/env bash
# GPU session, call 7 (about 9.5 min), after call 6 (carry .gpucache): issue 26's default zoo at full size under
# calibrated against PyTorch's CUDA graph and convroute under seed in the same rounds (tools/zoo_h200.py; session
# 19's zoo ran without a calibration on file, so under seed's routing). $OUT/call7.tgz holds zoo.txt, the JSON
# and the plot.
#   source .gl/prelude.sh && bash tools/gpu_session/call7.sh      (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call7; mkdir -p "$OUT" "$R"  # only the archive goes to $OUT
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
trap 'tar czf "$OUT/call7.tgz" -C "${R%/*}" call7' EXIT
{ git log --oneline -1; ls "$CONVROUTE_CACHE_DIR"; } > "$R/head.txt"
OUT=$R timeout 550 python3 tools/zoo_h200.py --no-calibrate --compare torch-cuda-graph,convroute-seed --budget 530 \
  > "$R/zoo.txt" 2>&1
tail -50 "$R/zoo.txt"
