#!/usr/bin/env bash
# GPU session, call 6 (at most ~9.5 min; first of a session): `convroute calibrate` into .gpucache, the suites
# under seed, etvk and calibrated (issue 24's last item: calibrated <= 1.05 on every suite), the sibling-conv
# merge's tests and its on/off (CONVROUTE_MERGE_SIBLINGS), calibrated with CONVROUTE_SEED_TIE on/off, mobilenet_v2
# under calibrated and seed node by node (tools/policy_nodes.py), squeezenet1_1's host phases, mobilenet_v2 in
# fresh processes against the CUDA graph and seed, then the C API maps' and threads' tests. Every step is cut to
# what is left of $LIMIT seconds (default 570), so the archive always comes back.
# Everything ends up in $OUT/call6.tgz with the calibration (.gpucache): warm machines do NOT keep .gpucache
# between calls (session 19), so `tar xzf call6.tgz .gpucache` here and carry .gpucache in later calls.
#   source .gl/prelude.sh && bash tools/gpu_session/call6.sh      (carry .gl .whl; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call6; mkdir -p "$OUT" "$R"  # only the archive goes to $OUT (8 files at most come back)
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
pack() { tar czf "$OUT/call6.tgz" -C "${R%/*}" call6 -C "$PWD" .gpucache; }
trap pack EXIT
LIMIT=${LIMIT:-570}
source "$(dirname "$0")/limits.sh"
git log --oneline -1 > "$R/head.txt"
timeout "$(cap 260)" python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget "${CAL_BUDGET:-230}" --no-progress --wide \
  > "$R/calibrate.txt" 2>&1
pack
timeout "$(cap 100)" python3 -m convroute.cli.main bench --suite all --policy seed,etvk,calibrated --budget 0.03 \
  --wide --no-progress --json "$R/suites.json" > "$R/suites.txt" 2>&1
grep -E "^(== |policy |fastest)" "$R/suites.txt"
pack
timeout "$(cap 40)" python3 -m pytest -q -p no:cacheprovider tests/test_siblings.py 2>&1 | tail -3 | tee "$R/tests.txt"
timeout "$(cap 60)" python3 tools/flag_ab.py CONVROUTE_SEED_TIE mobilenet_v2 resnet18 --size 224 --policy calibrated \
  --rounds 60 > "$R/seed_tie_ab.txt" 2>&1
tail -4 "$R/seed_tie_ab.txt"
timeout "$(cap 70)" python3 tools/flag_ab.py CONVROUTE_MERGE_SIBLINGS squeezenet1_1 timm:mixnet_s --size 224 \
  --policy calibrated --rounds 60 > "$R/siblings_ab.txt" 2>&1
tail -4 "$R/siblings_ab.txt"
pack
timeout "$(cap 50)" python3 tools/policy_nodes.py mobilenet_v2 > "$R/policy_nodes.txt" 2>&1
tail -4 "$R/policy_nodes.txt"
timeout "$(cap 35)" python3 tools/host_phases.py squeezenet1_1 224 seed 300 > "$R/host_phases.txt" 2>&1
head -14 "$R/host_phases.txt"
for i in 1 2 3 4 5; do
  timeout "$(cap 25)" python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph,convroute-seed --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)"
done > "$R/mnv2.txt"
cat "$R/mnv2.txt"
timeout "$(cap 60)" python3 -m pytest -q -p no:cacheprovider tests/test_mapping.py tests/test_threads.py 2>&1 \
  | tail -3 >> "$R/tests.txt"
cat "$R/tests.txt"
