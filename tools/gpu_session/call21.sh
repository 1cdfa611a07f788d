#!/usr/bin/env bash
# GPU session, call 21 (first of a session, <= $LIMIT s, default 585): issue 26's done-when figures on the card the
# issue names (an H100's where none is lent). Sessions 24-25's new kernels and passes on the GPU (scatter-add,
# variance, concat view, squeeze-excitation's vec4 form, layer scale, mm; session 26's reduction chains), an fp32 calibration into .gpucache, the
# default zoo against the CUDA graph (tools/zoo_h200.py), then mobilenet_v2 in five fresh processes, and last an fp16
# calibration for call22.sh. `tar xzf call21.tgz .gpucache` here after.
#   source .gl/prelude.sh && bash tools/gpu_session/call21.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call21; LIMIT=${LIMIT:-585}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
timeout "$(cap 70)" python3 -m pytest -q -p no:cacheprovider tests/test_scatter.py tests/test_ops_reduce.py \
  tests/test_concat_view.py tests/test_fuse_squeeze_excite.py tests/test_layer_scale.py tests/test_bmm.py \
  tests/test_fuse_reductions.py \
  -rf --tb=short > "$R/tests.txt" 2>&1
grep -E "^(FAILED|E )|passed|failed" "$R/tests.txt" | tail -8
timeout "$(cap 110)" python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget 80 --no-progress \
  > "$R/calibrate_float32.txt" 2>&1
head -4 "$R/calibrate_float32.txt"
pack
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
timeout "$(cap 120)" python3 -m convroute.cli.main calibrate --dtype float16 --selftest-cases 0 --budget 80 \
  --no-progress > "$R/calibrate_float16.txt" 2>&1
head -4 "$R/calibrate_float16.txt"
