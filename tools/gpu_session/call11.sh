#!/usr/bin/env bash
# GPU session, call 11 (<= $LIMIT s, default 480; after call10.sh, carry .gpucache): issue 26's per-process items
# (session 23 made the switches call 10 tried defaults or dropped them):
# - an fp16 zoo of six models against convroute-float32 and the fp16 CUDA graph (fp16 never slower than fp32);
# - mobilenet_v2 in five fresh processes against the CUDA graph (<= 1.0x in 5 of 5);
# - lcnet_050's host phases.
#   source .gl/prelude.sh && bash tools/gpu_session/call11.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call11; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
pack() { tar czf "$OUT/call11.tgz" -C "${R%/*}" call11; }
trap pack EXIT
LIMIT=${LIMIT:-480}
source "$(dirname "$0")/limits.sh"
{ git log --oneline -1; env | grep ^CONVROUTE_; ls "$CONVROUTE_CACHE_DIR"; } > "$R/head.txt"
timeout "$(cap 130)" python3 -m convroute.cli.main zoo timm:resnet50d resnet18 mobilenet_v2 timm:lcnet_050 \
  squeezenet1_1 convnext_tiny --dtype float16 \
  --policy calibrated --compare convroute-float32,torch-cuda-graph --runs 20 --no-progress \
  --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -16 "$R/zoo_fp16.txt"
pack
for i in 1 2 3 4 5; do
  timeout "$(cap 25)" python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph,convroute-seed --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)"
done > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
timeout "$(cap 35)" python3 tools/host_phases.py timm:lcnet_050 224 calibrated 300 > "$R/host_phases.txt" 2>&1
head -14 "$R/host_phases.txt"
