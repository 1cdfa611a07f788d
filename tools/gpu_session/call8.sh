#!/usr/bin/env bash
# GPU session, call 8 (at most ~7 min), after call 6 (carry .gpucache): issue 26's "fp16 never slower than fp32"
# on a zoo subset in one `convroute zoo` (float16, with convroute in float32 and the CUDA graph in the same
# rounds), then calibrated with CONVROUTE_SEED_TIE on and off on two more models than call 6's. Steps are cut to
# what is left of $LIMIT seconds (default 420).
#   source .gl/prelude.sh && bash tools/gpu_session/call8.sh      (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call8; mkdir -p "$OUT" "$R"; LIMIT=${LIMIT:-420}
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
trap 'tar czf "$OUT/call8.tgz" -C "${R%/*}" call8' EXIT
source "$(dirname "$0")/limits.sh"
{ git log --oneline -1; ls "$CONVROUTE_CACHE_DIR"; } > "$R/head.txt"
timeout "$(cap 300)" python3 -m convroute.cli.main zoo resnet18 mobilenet_v2 resnet50 squeezenet1_1 efficientnet_b0 \
  convnext_tiny timm:mixnet_s timm:lcnet_050 timm:resnet50d timm:ghostnet_100 --policy calibrated \
  --dtype float16 --compare torch-cuda-graph,convroute-float32 --runs 30 --no-progress --wide \
  --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -25 "$R/zoo_fp16.txt"
timeout "$(cap 110)" python3 tools/flag_ab.py CONVROUTE_SEED_TIE efficientnet_b0 timm:resnest14d --size 224 \
  --policy calibrated --rounds 60 > "$R/seed_tie_ab.txt" 2>&1
tail -5 "$R/seed_tie_ab.txt"
