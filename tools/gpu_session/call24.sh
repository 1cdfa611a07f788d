#!/usr/bin/env bash
# GPU session, call 24 (after call22.sh, <= $LIMIT s, default 430; carry .gl .whl .gpucache):
# session 25's squeeze-excitation kernel (its two products four hidden units a load; session 19 found the fused
# block mixed on the H100, 1.309x on timm mobilenetv3_large_100's 960 -> 240 squeezes) tested and A/B'd on the GPU,
# then CONVROUTE_DEPTHWISE_CONSTANTS in fp32 on the zoo's GPU-bound depthwise models (convnext_tiny, xception41:
# their GPU pass alone was over the graph's call in session 24), the layer-scale fold (on since session 25: 36 of
# convnext_tiny's 122 dispatches go) on / off, session 26's reduction chains (CONVROUTE_FUSE_REDUCTIONS, off on
# GPUs until this A/B: resnest14d and skresnet18 lose two dispatches a split-attention block) on / off, and
# dtype_nodes.py per node on mobilenet_v2.
#   source .gl/prelude.sh && bash tools/gpu_session/call24.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call24; LIMIT=${LIMIT:-430}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 40)" python3 -m pytest -q -p no:cacheprovider tests/test_fuse_squeeze_excite.py -rf --tb=short \
  > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
timeout "$(cap 130)" python3 tools/flag_ab.py CONVROUTE_SQUEEZE_EXCITE efficientnet_b0 mobilenet_v3_small \
  regnet_y_400mf timm:efficientnet_b0 timm:mobilenetv3_large_100 --policy calibrated --rounds 30 \
  > "$R/ab_squeeze_excite.txt" 2>&1
tail -9 "$R/ab_squeeze_excite.txt"
pack
timeout "$(cap 70)" python3 tools/flag_ab.py CONVROUTE_DEPTHWISE_CONSTANTS convnext_tiny timm:xception41 \
  mobilenet_v2 --policy calibrated --rounds 20 > "$R/ab_DEPTHWISE_CONSTANTS_fp32.txt" 2>&1
tail -6 "$R/ab_DEPTHWISE_CONSTANTS_fp32.txt"
pack
timeout "$(cap 50)" python3 tools/flag_ab.py CONVROUTE_LAYER_SCALE convnext_tiny timm:convnext_atto \
  --policy calibrated --rounds 30 > "$R/ab_layer_scale.txt" 2>&1
tail -5 "$R/ab_layer_scale.txt"
pack
timeout "$(cap 50)" python3 tools/flag_ab.py CONVROUTE_FUSE_REDUCTIONS timm:resnest14d timm:skresnet18 \
  --policy calibrated --rounds 30 > "$R/ab_fuse_reductions.txt" 2>&1
tail -5 "$R/ab_fuse_reductions.txt"
pack
timeout "$(cap 70)" python3 tools/gpu_session/dtype_nodes.py mobilenet_v2 224 3 > "$R/nodes_mobilenet_v2.txt" 2>&1
head -16 "$R/nodes_mobilenet_v2.txt"
