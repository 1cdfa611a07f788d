#!/usr/bin/env bash
# GPU session, call 10 (first of a session, <= $LIMIT s, default 560): `convroute calibrate` into .gpucache (the
# kernel hash changed in session 21, so every older calibration is refused), then the checks behind the two
# switches that are off until a GPU has run them:
# - CONVROUTE_WINOGRAD_F16_SCALE (winograd2's f16 V stored times 1/4): the differential fuzz and the winograd and
#   fp16 tests with it on, its on/off A/B on timm resnet50d in float16. Turn it on by default only with 0 wrong.
# - CONVROUTE_ENCODE_THREAD (the next command buffer encoded on a thread): its tests and its on/off A/B on the
#   host-bound models. Turn it on only if the A/B gains and the tests hold.
# - CONVROUTE_BMM (bmm on the GPU; on for CPU adapters only): its fuzz (100 random shapes per dtype) and the wide
#   convs' tests. With 0 wrong, make bmm the default on GPUs too.
# Every step is cut to what is left of $LIMIT, so the archive (with .gpucache) always comes back:
# `tar xzf call10.tgz .gpucache` here at once and carry .gpucache in later calls (warm machines do not keep it).
#   source .gl/prelude.sh && bash tools/gpu_session/call10.sh   (carry .gl .whl; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call10; mkdir -p "$OUT" "$R"  # only the archive goes to $OUT
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
pack() { tar czf "$OUT/call10.tgz" -C "${R%/*}" call10 -C "$PWD" .gpucache; }
trap pack EXIT
LIMIT=${LIMIT:-560}
source "$(dirname "$0")/limits.sh"
git log --oneline -1 > "$R/head.txt"
timeout "$(cap 250)" python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget "${CAL_BUDGET:-200}" \
  --no-progress --wide > "$R/calibrate.txt" 2>&1
tail -30 "$R/calibrate.txt"
pack
CONVROUTE_WINOGRAD_F16_SCALE=1 CONVROUTE_FUZZ=200 timeout "$(cap 120)" python3 -m pytest -q -p no:cacheprovider \
  tests/test_fuzz.py -k "test_fuzz and float" -s 2>&1 | grep -E "cases|wrong|passed|failed" | tail -6 | tee "$R/fuzz.txt"
CONVROUTE_WINOGRAD_F16_SCALE=1 timeout "$(cap 60)" python3 -m pytest -q -p no:cacheprovider tests/test_winograd.py \
  tests/test_fp16.py 2>&1 | tail -2 | tee "$R/tests.txt"
timeout "$(cap 30)" python3 -m pytest -q -p no:cacheprovider tests/test_threads.py 2>&1 | tail -2 | tee -a "$R/tests.txt"
CONVROUTE_BMM=1 CONVROUTE_BMM_FUZZ=100 timeout "$(cap 60)" python3 -m pytest -q -p no:cacheprovider tests/test_bmm.py \
  tests/test_wide_convs.py tests/test_conv3d.py -s 2>&1 | grep -E "cases|passed|failed" | tail -4 | tee -a "$R/tests.txt"
pack
timeout "$(cap 60)" python3 tools/flag_ab.py CONVROUTE_WINOGRAD_F16_SCALE timm:resnet50d --dtype float16 \
  --policy calibrated --rounds 40 > "$R/scale_ab.txt" 2>&1
tail -3 "$R/scale_ab.txt"
timeout "$(cap 100)" python3 tools/flag_ab.py CONVROUTE_ENCODE_THREAD timm:lcnet_050 squeezenet1_1 mobilenet_v2 \
  --policy calibrated --rounds 60 > "$R/encode_ab.txt" 2>&1
tail -5 "$R/encode_ab.txt"
