#!/usr/bin/env bash
# GPU session, call 2 (about 8 min): issue 24's figures. `convroute calibrate` (grid, coverage pool, held-out
# score) into .gpucache, kept on the warm machine for call 3; then tools/heldout_h200.py (held-out totals, worst
# layers, the dilated table, deeplabv3 / fcn at 512 px: calibrated vs autotune vs the CUDA graph), then the suites (calibrated <= 1.05).
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
timeout 300 python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget 250 --no-progress --wide 2>&1 \
  | tee "$OUT/calibrate.txt"
timeout 280 python3 tools/heldout_h200.py 2>&1 | tail -120 | tee "$OUT/heldout.txt"
timeout 90 python3 -m convroute.cli.main bench --suite all --policy seed,etvk,calibrated --budget 0.03 --wide 2>&1 \
  | tail -40 | tee "$OUT/suites.txt"
