#!/usr/bin/env bash
# GPU session, call 17 (<= $LIMIT s, default 560; carry .gl .whl .gpucache from call 15): the wide-conv chunk fix
# and the new concat view on the GPU (tests), then issue 26's host-bound models: the concat view and the
# depthwise + pointwise fusion each on / off (tools/flag_ab.py), mobilenet_v2 in five fresh processes against
# the CUDA graph, and the zoo's slowest models against the graph.
#   source .gl/prelude.sh && bash tools/gpu_session/call17.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call17; LIMIT=${LIMIT:-560}; source "$(dirname "$0")/session.sh"
timeout "$(cap 60)" python3 -m pytest -q -p no:cacheprovider tests/test_wide_convs.py tests/test_concat_view.py \
  -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
timeout "$(cap 60)" python3 tools/flag_ab.py CONVROUTE_CONCAT_VIEW shufflenet_v2_x0_5 --policy calibrated \
  --rounds 60 > "$R/ab_concat_view.txt" 2>&1
tail -6 "$R/ab_concat_view.txt"
timeout "$(cap 110)" python3 tools/flag_ab.py CONVROUTE_FUSE_DEPTHWISE shufflenet_v2_x0_5 timm:lcnet_050 \
  mobilenet_v2 mnasnet0_5 --policy calibrated --rounds 60 > "$R/ab_fuse_depthwise.txt" 2>&1
tail -12 "$R/ab_fuse_depthwise.txt"
pack
five_processes mobilenet_v2 > "$R/mnv2.txt"
cat "$R/mnv2.txt"
pack
timeout "$(cap 150)" python3 -m convroute.cli.main zoo shufflenet_v2_x0_5 squeezenet1_1 timm:lcnet_050 \
  timm:resnest14d convnext_tiny timm:xception41 mobilenet_v2 --policy calibrated --compare torch-cuda-graph \
  --runs 30 --no-progress --json "$R/zoo_slowest.json" > "$R/zoo_slowest.txt" 2>&1
tail -16 "$R/zoo_slowest.txt"
