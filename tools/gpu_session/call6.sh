#!/usr/bin/env bash
# GPU session, call 6 (about 9 min; first of a session): `convroute calibrate` into .gpucache, the suites under
# seed, etvk and calibrated (issue 24's last item: calibrated <= 1.05 on every suite), mobilenet_v2 under
# calibrated and seed node by node (tools/policy_nodes.py: session 19 saw calibrated 1.06-1.08x slower than seed
# on the H100 with 32 of 35 1x1 convs sent to implicit_gemm), mobilenet_v2 in five fresh processes against the
# CUDA graph and seed, squeezenet1_1's host phases (1.96x the graph in session 19, host-bound), then the C API
# maps' and threads' tests and session 17's kernels' fuzz if time is left.
# Everything ends up in $OUT/call6.tgz with the calibration (.gpucache): warm machines do NOT keep .gpucache
# between calls (session 19), so `tar xzf call6.tgz .gpucache` here and carry .gpucache in calls 7 and 4.
#   source .gl/prelude.sh && bash tools/gpu_session/call6.sh      (carry .gl .whl; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call6; mkdir -p "$OUT" "$R"  # only the archive goes to $OUT (8 files at most come back)
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
pack() { tar czf "$OUT/call6.tgz" -C "${R%/*}" call6 -C "$PWD" .gpucache; }
trap pack EXIT
git log --oneline -1 > "$R/head.txt"
timeout 260 python3 -m convroute.cli.main calibrate --selftest-cases 0 --budget 230 --no-progress --wide \
  > "$R/calibrate.txt" 2>&1
pack
timeout 100 python3 -m convroute.cli.main bench --suite all --policy seed,etvk,calibrated --budget 0.03 --wide \
  --no-progress --json "$R/suites.json" > "$R/suites.txt" 2>&1
grep -E "^(== |policy |fastest)" "$R/suites.txt"
timeout 60 python3 tools/policy_nodes.py mobilenet_v2 resnet18 > "$R/policy_nodes.txt" 2>&1
tail -4 "$R/policy_nodes.txt"
for i in 1 2 3 4 5; do
  timeout 25 python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph,convroute-seed --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)"
done > "$R/mnv2.txt"
cat "$R/mnv2.txt"
timeout 40 python3 tools/host_phases.py squeezenet1_1 224 seed 300 > "$R/host_phases.txt" 2>&1
head -14 "$R/host_phases.txt"
{ timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_mapping.py tests/test_threads.py 2>&1 | tail -3
  CONVROUTE_CHANNEL_NORM_FUZZ=300 timeout 60 python3 -m pytest -q -s -p no:cacheprovider tests/test_channels_last.py \
    2>&1 | grep -E "fuzz|passed|failed|wrong"; } > "$R/tests.txt"
cat "$R/tests.txt"
