#!/usr/bin/env bash
# GPU session, call 51 (<= $LIMIT s, default 420; carry .gl .whl (with wgpudawn) .gpucache): mobilenet_v2 against
# the CUDA graph in fresh processes, wgpu-native and Dawn in turn (CONVROUTE_WEBGPU=dawn; Dawn as shipped and with
# disable_robustness), each implementation with its own fp32 calibration. mobilenet_v2 loses on the host (session
# 31: ~0.29 ms of host a call in slow processes, ~6 of each dispatch's ~8-10 us in wgpu-native's finish); Dawn was
# last measured in session 8, before the raw C-API recording (device/gpu.py works on either).
#   source .gl/prelude.sh && bash tools/gpu_session/call51.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call51; LIMIT=${LIMIT:-420}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
python3 -c "import wgpudawn; print('wgpudawn', wgpudawn.__version__)"
CONVROUTE_WEBGPU=dawn timeout "$(cap 100)" python3 -m convroute.cli.main calibrate --dtype float32 \
  --selftest-cases 0 --budget 60 --no-progress > "$R/calibrate_dawn.txt" 2>&1
head -3 "$R/calibrate_dawn.txt"; tail -2 "$R/calibrate_dawn.txt"
pack
one() {  # one fresh process: label, then the environment to run it in
  local label=$1; shift
  echo "== $label"
  env "$@" timeout "$(cap 30)" python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)|Error"
}
for i in 1 2 3 4 5; do
  one native CONVROUTE_WEBGPU=wgpu-native
  one dawn CONVROUTE_WEBGPU=dawn
  one dawn-norobust CONVROUTE_WEBGPU=dawn CONVROUTE_DAWN_TOGGLES=disable_robustness
done 2>&1 | tee "$R/mnv2_dawn.txt"
