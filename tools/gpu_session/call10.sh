#!/usr/bin/env bash
# GPU session 22, call 10 (<= ~6 min), on branch winograd-f16-range: the differential fuzz (the kernel changed:
# winograd2's f16 V stored times 1/4), the winograd tests, then timm resnet50d in float16 vs float32 and
# mixnet_s / squeezenet1_1 / lcnet_050 in one zoo (fp16 "never slower than fp32", issue 26). Merge the branch into
# main only with 0 wrong here.  source .gl/prelude.sh && bash tools/gpu_session/call10.sh  (carry .gl .whl .gpucache)
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call10; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
pack() { tar czf "$OUT/call10.tgz" -C "${R%/*}" call10; }
trap pack EXIT
git log --oneline -1 > "$R/head.txt"
CONVROUTE_FUZZ=200 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py -k "test_fuzz and float" -s \
  2>&1 | grep -E "cases|wrong|passed|failed" | tail -6 | tee "$R/fuzz.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_winograd.py 2>&1 | tail -2 | tee "$R/tests.txt"
timeout 100 python3 tools/gpu_session/dtype_nodes.py timm:resnet50d > "$R/resnet50d_nodes.txt" 2>&1
head -6 "$R/resnet50d_nodes.txt"
timeout 150 python3 -m convroute.cli.main zoo timm:resnet50d resnet18 timm:lcnet_050 timm:mixnet_s squeezenet1_1 \
  --dtype float16 --policy calibrated --compare convroute-float32,torch-cuda-graph --runs 20 --no-progress \
  --json "$R/zoo_fp16.json" > "$R/zoo_fp16.txt" 2>&1
tail -14 "$R/zoo_fp16.txt"
