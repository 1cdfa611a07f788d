#!/usr/bin/env bash
# GPU session, call 26 (the first of a session, <= $LIMIT s, default 450): issue 26's one open done-when item
# first. The changed kernels' tests (session 28: f16 convs reading the float32 input, odd-length f16 views;
# session 27: the softmax-weighted sum), an fp32 and an fp16 calibration (60 s budgets), the fp16 zoo of six
# against convroute in fp32 (rotating order), the conv fuzz (its f16 cases draw the float32 input half the time),
# then per node in three dtype variants on timm lcnet_050 (session 26: its fp16 calibration sent 5x5 depthwise
# convs to direct, 18 % slower a node). A shorter LIMIT cuts the last steps first.
# Then `tar xzf call26.tgz .gpucache` here and call27.sh at once.
#   source .gl/prelude.sh && bash tools/gpu_session/call26.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call26; LIMIT=${LIMIT:-450}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 50)" python3 -m pytest -q -p no:cacheprovider tests/test_float32_input.py tests/test_fuse_reductions.py \
  tests/test_ops_reduce.py tests/test_fuse_squeeze_excite.py tests/test_fuse_views.py -rf --tb=short \
  > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
calibrations 60 85
pack
timeout "$(cap 130)" python3 -m convroute.cli.main zoo timm:resnet50d resnet18 mobilenet_v2 timm:lcnet_050 \
  squeezenet1_1 convnext_tiny --dtype float16 --policy calibrated --compare convroute-float32 \
  --runs 30 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
pack
CONVROUTE_FUZZ=100 timeout "$(cap 50)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
pack
timeout "$(cap 50)" python3 tools/gpu_session/dtype_nodes.py timm:lcnet_050 224 3 > "$R/nodes_lcnet_050.txt" 2>&1
head -20 "$R/nodes_lcnet_050.txt"
