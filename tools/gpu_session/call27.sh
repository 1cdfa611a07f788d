#!/usr/bin/env bash
# GPU session, call 27 (right after call26.sh on the same machine, <= $LIMIT s, default 540; carry .gl .whl
# .gpucache): the default zoo against the CUDA graph (tools/zoo_h200.py) and mobilenet_v2 in five processes on
# call26's fp32 calibration, then the reduction-chain and squeeze-excitation A/Bs (both off on GPUs until these).
#   source .gl/prelude.sh && bash tools/gpu_session/call27.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call27; LIMIT=${LIMIT:-540}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
OUT=$R timeout "$(cap 230)" python3 tools/zoo_h200.py --no-calibrate --compare torch-cuda-graph --budget 210 \
  > "$R/zoo.txt" 2>&1
tail -48 "$R/zoo.txt"
pack
for i in 1 2 3 4 5; do
  timeout "$(cap 25)" python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)"
done > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
timeout "$(cap 50)" python3 tools/flag_ab.py CONVROUTE_FUSE_REDUCTIONS timm:resnest14d timm:skresnet18 \
  --policy calibrated --rounds 30 > "$R/ab_fuse_reductions.txt" 2>&1
tail -5 "$R/ab_fuse_reductions.txt"
pack
timeout "$(cap 130)" python3 tools/flag_ab.py CONVROUTE_SQUEEZE_EXCITE efficientnet_b0 mobilenet_v3_small \
  regnet_y_400mf timm:efficientnet_b0 timm:mobilenetv3_large_100 --policy calibrated --rounds 30 \
  > "$R/ab_squeeze_excite.txt" 2>&1
tail -9 "$R/ab_squeeze_excite.txt"
