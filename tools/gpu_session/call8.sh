#!/usr/bin/env bash
# GPU session, call 8 (about 9 min), after call 6 (carry .gpucache): sibling convs merged (frontend/siblings.py)
# tested on the GPU and measured on and off (CONVROUTE_MERGE_SIBLINGS, tools/flag_ab.py: squeezenet1_1's fire
# modules, MixNet's mixed kernels, inception), calibrated with CONVROUTE_SEED_TIE on and off (seed's pick kept
# when measured within 10 % of the fastest: mobilenet_v2 ran 1.06-1.08x seed under calibrated in session 19),
# then issue 26's "fp16 never slower than fp32" on a zoo subset in one `convroute zoo` (float16 with
# convroute-float32 and the CUDA graph in the same rounds).
#   source .gl/prelude.sh && bash tools/gpu_session/call8.sh      (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call8; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
trap 'tar czf "$OUT/call8.tgz" -C "${R%/*}" call8' EXIT
{ git log --oneline -1; ls "$CONVROUTE_CACHE_DIR"; } > "$R/head.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_siblings.py 2>&1 | tail -3 | tee "$R/tests.txt"
timeout 120 python3 tools/flag_ab.py CONVROUTE_MERGE_SIBLINGS squeezenet1_1 timm:mixnet_s timm:mixnet_m \
  inception_v3 --size 224 --policy calibrated --rounds 60 > "$R/siblings_ab.txt" 2>&1
tail -7 "$R/siblings_ab.txt"
timeout 120 python3 tools/flag_ab.py CONVROUTE_SEED_TIE mobilenet_v2 resnet18 efficientnet_b0 timm:resnest14d \
  --size 224 --policy calibrated --rounds 60 > "$R/seed_tie_ab.txt" 2>&1
tail -7 "$R/seed_tie_ab.txt"
timeout 280 python3 -m convroute.cli.main zoo resnet18 mobilenet_v2 resnet50 squeezenet1_1 efficientnet_b0 \
  convnext_tiny timm:mixnet_s timm:lcnet_050 timm:resnet50d timm:ghostnet_100 --policy calibrated \
  --dtype float16 --compare torch-cuda-graph,convroute-float32 --runs 30 --no-progress --wide \
  --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -25 "$R/zoo_fp16.txt"
