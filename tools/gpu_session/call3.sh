#!/usr/bin/env bash
# GPU session, call 3 (about 9 min), after call 2's calibration (warm machine, or carry .gpucache): the C API
# maps' tests, session 17's kernels' tests with their GPU fuzz (300 random register-tile linears, 300 random
# channel norms), the maps' A/B against wgpu-py's maps (tools/maps_ab.py), ConvNeXt with and without the
# channels-last rewrite (tools/flag_ab.py CONVROUTE_CHANNELS_LAST), issue 26's default zoo against
# PyTorch's CUDA graph (tools/zoo_h200.py: $OUT/zoo.json, zoo.png), then mobilenet_v2 in five fresh processes
# (<= 1.0x the graph in 5 of 5).
#   source .gl/prelude.sh && bash tools/gpu_session/call3.sh      (carry .gl .whl [.gpucache]; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
{ git log --oneline -1; ls "$CONVROUTE_CACHE_DIR"
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_mapping.py tests/test_threads.py 2>&1 | tail -3
  CONVROUTE_LINEAR_FUZZ=300 CONVROUTE_CHANNEL_NORM_FUZZ=300 timeout 90 python3 -m pytest -q -s -p no:cacheprovider \
    tests/test_linear_gemm.py tests/test_channels_last.py 2>&1 | grep -E "fuzz|passed|failed|wrong"
  timeout 60 python3 tools/maps_ab.py mobilenet_v2 resnet18 --policy calibrated 2>&1 | tail -5
  timeout 60 python3 tools/flag_ab.py CONVROUTE_CHANNELS_LAST --policy calibrated 2>&1 | tail -6; } 2>&1 \
  | tee "$OUT/head.txt"
timeout 370 python3 tools/zoo_h200.py --no-calibrate --budget 350 2>&1 | tail -70 | tee "$OUT/zoo.txt"
for i in 1 2 3 4 5; do
  timeout 20 python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated --compare torch-cuda-graph \
    --runs 30 2>&1 | grep -E "^(convroute |torch-cuda-graph |check|GPU pass)"
done | tee "$OUT/mnv2.txt"
