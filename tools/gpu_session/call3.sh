#!/usr/bin/env bash
# GPU session, call 3 (about 10 min): issue 26's zoo against PyTorch's CUDA graph with call 2's calibration
# (tools/zoo_h200.py writes $OUT/zoo.json and zoo.png), then the suites under every policy (issue 24: <= 1.05).
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
timeout 420 python3 tools/zoo_h200.py --no-calibrate --budget 400 2>&1 | tail -70 | tee "$OUT/zoo.txt"
timeout 150 python3 -m convroute.cli.main bench --suite all --policy seed,etvk,calibrated --budget 0.03 --wide 2>&1 \
  | tail -40 | tee "$OUT/suites.txt"
