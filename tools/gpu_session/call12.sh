#!/usr/bin/env bash
# GPU session, call 12 (<= $LIMIT s, default 300; carry .gl .whl .gpucache): why call 10's float16 fuzz found
# wrong results with CONVROUTE_WINOGRAD_F16_SCALE=1 (16 of 1831 runs) and test_conv_command_runs_fp16 failed:
# the `conv` command and the fuzz replay (seed 1218558262, float16, stop at the first wrong) with the switch on
# and off, both fuzzes at once; then the host phases of two models whose whole call doubled against session 21.
#   source .gl/prelude.sh && bash tools/gpu_session/call12.sh   (results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call12; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
pack() { tar czf "$OUT/call12.tgz" -C "${R%/*}" call12; }
trap pack EXIT
LIMIT=${LIMIT:-300}
source "$(dirname "$0")/limits.sh"
git log --oneline -1 > "$R/head.txt"
for flag in 1 0; do
  CONVROUTE_WINOGRAD_F16_SCALE=$flag timeout "$(cap 30)" python3 -m convroute.cli.main conv --input 2,4,7,9 \
    --weight 6,4,3,3 --padding 1 --budget 0.05 --repeats 3 --dtype float16 --accumulate float16 > "$R/conv_$flag.txt" 2>&1
  echo "conv, scale $flag:"; cat "$R/conv_$flag.txt"
done
for flag in 1 0; do
  CONVROUTE_WINOGRAD_F16_SCALE=$flag CONVROUTE_FUZZ=200 CONVROUTE_FUZZ_SEED=1218558262 timeout "$(cap 150)" \
    python3 -m pytest -q -x -p no:cacheprovider tests/test_fuzz.py -k "test_fuzz and float16" -s \
    > "$R/fuzz_$flag.txt" 2>&1 &
done
wait
for flag in 1 0; do echo "fuzz, scale $flag:"; grep -E "cases|wrong|WRONG|Failed|FAILED|passed|failed|rel" "$R/fuzz_$flag.txt" | tail -8; done
pack
for model in timm:lcnet_050 mobilenet_v2; do
  timeout "$(cap 40)" python3 tools/host_phases.py $model 224 calibrated 300 > "$R/host_${model#timm:}.txt" 2>&1
  head -16 "$R/host_${model#timm:}.txt"
done
timeout "$(cap 40)" python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
  --compare torch-cuda-graph --runs 30 2>&1 | tail -8 | tee "$R/mnv2.txt"
