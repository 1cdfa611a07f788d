#!/usr/bin/env bash
# GPU session, call 19 (first of a session, <= $LIMIT s, default 570): issue 26's one open item, fp16 never slower
# than fp32. Calibrations in both dtypes into .gpucache (session 24's concat view changed the kernel hash), the
# fp16 zoo of six against convroute-float32 and the fp16 graph with the engines' order now rotating per round
# (call 15 had fp16 always right after the CUDA graph: lcnet_050 1.04, mobilenet_v2 1.03 the fp32 time), then
# dtype_nodes.py's interleaved per-node times on the two models. `tar xzf call19.tgz .gpucache` here after.
#   source .gl/prelude.sh && bash tools/gpu_session/call19.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
NAME=call19; LIMIT=${LIMIT:-570}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
for dtype in float32 float16; do
  timeout "$(cap 130)" python3 -m convroute.cli.main calibrate --dtype $dtype --selftest-cases 0 --budget 100 \
    --no-progress > "$R/calibrate_$dtype.txt" 2>&1
  head -4 "$R/calibrate_$dtype.txt"
done
pack
timeout "$(cap 150)" python3 -m convroute.cli.main zoo timm:resnet50d resnet18 mobilenet_v2 timm:lcnet_050 \
  squeezenet1_1 convnext_tiny --dtype float16 --policy calibrated --compare convroute-float32,torch-cuda-graph \
  --runs 30 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
pack
for model in mobilenet_v2 timm:lcnet_050; do
  timeout "$(cap 70)" python3 tools/gpu_session/dtype_nodes.py $model 224 3 > "$R/nodes_${model#timm:}.txt" 2>&1
  head -16 "$R/nodes_${model#timm:}.txt"
done
