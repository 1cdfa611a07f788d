#!/usr/bin/env bash
# GPU session, call 2 (about 7 min): issue 24's figures. `convroute calibrate` (grid, coverage pool, held-out
# score) into .gpucache, then tools/heldout_h200.py (held-out totals, worst layers, the dilated table, deeplabv3 /
# fcn at 512 px: calibrated vs autotune vs the CUDA graph), then the suites (calibrated <= 1.05 on each).
# The calibration comes back as $OUT/gpucache.tgz: unpack it here (tar xzf) and carry .gpucache if the machine
# went back before calls 3 and 4 (a warm machine keeps it).
#   source .gl/prelude.sh && bash tools/gpu_session/call2.sh      (carry .gl .whl; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
git log --oneline -1 > "$OUT/head.txt"
timeout 300 python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget 250 --no-progress --wide 2>&1 \
  | tee "$OUT/calibrate.txt"
tar czf "$OUT/gpucache.tgz" .gpucache
timeout 200 python3 tools/heldout_h200.py 2>&1 | tail -120 | tee "$OUT/heldout.txt"
timeout 80 python3 -m convroute.cli.main bench --suite all --policy seed,etvk,calibrated --budget 0.03 --wide 2>&1 \
  | tail -40 | tee "$OUT/suites.txt"
