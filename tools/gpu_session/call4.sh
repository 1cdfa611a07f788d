#!/usr/bin/env bash
# GPU session, short call (about 7 min) after call 2's calibration (carry .gpucache): issue 24's held-out and
# suite figures, issue 26's mobilenet_v2 in five fresh processes and fp16 vs fp32 on two zoo models.
#   source .gl/prelude.sh && bash tools/gpu_session/call4.sh      (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
git log --oneline -1 > "$OUT/head.txt"
timeout 150 python3 tools/heldout_h200.py 2>&1 | tail -120 > "$OUT/heldout.txt"
timeout 85 python3 -m convroute.cli.main bench --suite all --policy seed,etvk,calibrated --budget 0.03 --wide 2>&1 \
  | tail -40 > "$OUT/suites.txt"
for i in 1 2 3 4 5; do
  timeout 20 python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated --compare torch-cuda-graph \
    --runs 30 2>&1 | grep -E "^(convroute |torch-cuda-graph |check)"
done > "$OUT/mnv2.txt"
timeout 45 python3 -m convroute.cli.main zoo resnet18 mobilenet_v2 --dtype float16 --policy calibrated \
  --compare torch-cuda-graph,convroute-float32 --runs 20 --no-progress 2>&1 | tail -16 > "$OUT/zoo_fp16.txt"
CONVROUTE_DILATED_FUZZ=100 timeout 50 python3 -m pytest -q -p no:cacheprovider tests/test_direct_dilated.py 2>&1 \
  | tail -4 > "$OUT/fuzz_dilated.txt"
tail -4 "$OUT/heldout.txt"; cat "$OUT/suites.txt" "$OUT/mnv2.txt" "$OUT/zoo_fp16.txt" "$OUT/fuzz_dilated.txt"
