#!/usr/bin/env bash
# GPU session 22, call 10 (<= ~7 min; after call6.sh, whose calibrate the kernel hash change needs): winograd2's
# f16 V stored times 1/4 (CONVROUTE_WINOGRAD_F16_SCALE, off until this runs): the differential fuzz and the
# winograd tests with it on, its on/off A/B on timm resnet50d in float16, then a float16 zoo of five models with
# it on against convroute-float32 and the CUDA graph (issue 26: fp16 never slower than fp32). Turn the switch on by
# default only with 0 wrong here.
#   source .gl/prelude.sh && bash tools/gpu_session/call10.sh   (carry .gl .whl .gpucache)
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call10; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
pack() { tar czf "$OUT/call10.tgz" -C "${R%/*}" call10; }
trap pack EXIT
git log --oneline -1 > "$R/head.txt"
CONVROUTE_WINOGRAD_F16_SCALE=1 CONVROUTE_FUZZ=200 timeout 200 python3 -m pytest -q -p no:cacheprovider \
  tests/test_fuzz.py -k "test_fuzz and float" -s 2>&1 | grep -E "cases|wrong|passed|failed" | tail -6 | tee "$R/fuzz.txt"
CONVROUTE_WINOGRAD_F16_SCALE=1 timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_winograd.py tests/test_fp16.py 2>&1 \
  | tail -2 | tee "$R/tests.txt"
timeout 90 python3 tools/flag_ab.py CONVROUTE_WINOGRAD_F16_SCALE timm:resnet50d --dtype float16 --policy calibrated \
  --rounds 40 > "$R/scale_ab.txt" 2>&1
tail -3 "$R/scale_ab.txt"
CONVROUTE_WINOGRAD_F16_SCALE=1 timeout 150 python3 -m convroute.cli.main zoo timm:resnet50d resnet18 timm:lcnet_050 \
  timm:mixnet_s squeezenet1_1 --dtype float16 --policy calibrated --compare convroute-float32,torch-cuda-graph \
  --runs 20 --no-progress --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
