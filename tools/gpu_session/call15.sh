#!/usr/bin/env bash
# GPU session, call 15 (first of a session, <= $LIMIT s, default 570): session 23's open items on one machine.
# Calibrations in both dtypes into .gpucache (session 23 changed winograd2's f16 WGSL: older ones are refused),
# the tests session 23 could not run on a GPU (wide convs, conv3d) and the fuzz (150 cases), then fp16 against fp32 with routing measured
# for each: the fp16 zoo of six and, node by node, float32 / float16 / float16 with f32 sums on the two
# host-bound models where fp16 lost (depthwise nodes 10-35 % slower in f16). `tar xzf call15.tgz .gpucache` here.
#   source .gl/prelude.sh && bash tools/gpu_session/call15.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call15; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
pack() { tar czf "$OUT/call15.tgz" -C "${R%/*}" call15 -C "$PWD" .gpucache; }
trap pack EXIT
LIMIT=${LIMIT:-570}
source "$(dirname "$0")/limits.sh"
git log --oneline -1 > "$R/head.txt"
for dtype in float32 float16; do
  timeout "$(cap 150)" python3 -m convroute.cli.main calibrate --dtype $dtype --selftest-cases 0 --budget 110 \
    --no-progress > "$R/calibrate_$dtype.txt" 2>&1
  head -4 "$R/calibrate_$dtype.txt"
done
pack
timeout "$(cap 60)" python3 -m pytest -q -p no:cacheprovider tests/test_wide_convs.py tests/test_conv3d.py 2>&1 \
  | tail -2 | tee "$R/tests.txt"
CONVROUTE_FUZZ=150 timeout "$(cap 70)" python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
  -k "test_fuzz and float" -s > "$R/fuzz.txt" 2>&1  # session 23's open clamp bound (ea812e2) is in its draws
grep -E "cases|WRONG|passed|failed" "$R/fuzz.txt" | tail -6
timeout "$(cap 120)" python3 -m convroute.cli.main zoo timm:resnet50d resnet18 mobilenet_v2 timm:lcnet_050 \
  squeezenet1_1 convnext_tiny --dtype float16 --policy calibrated --compare convroute-float32,torch-cuda-graph \
  --runs 20 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
pack
for model in mobilenet_v2 timm:lcnet_050; do
  timeout "$(cap 50)" python3 tools/gpu_session/dtype_nodes.py $model > "$R/nodes_${model#timm:}.txt" 2>&1
  head -16 "$R/nodes_${model#timm:}.txt"
done
