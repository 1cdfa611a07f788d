#!/usr/bin/env bash
# GPU session 22, call 11 (<= ~5 min; after call6.sh): CONVROUTE_ENCODE_THREAD (off until measured): its on/off
# A/B on the host-bound models, lcnet_050's host phases with it on and off, and mobilenet_v2 in five fresh
# processes against the CUDA graph with it on (issue 26: <= 1.0x in 5 of 5). Turn it on by default only if the
# A/B gains and the tests hold.
#   source .gl/prelude.sh && bash tools/gpu_session/call11.sh   (carry .gl .whl .gpucache)
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call11; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
pack() { tar czf "$OUT/call11.tgz" -C "${R%/*}" call11; }
trap pack EXIT
git log --oneline -1 > "$R/head.txt"
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_threads.py 2>&1 | tail -2 | tee "$R/tests.txt"
timeout 120 python3 tools/flag_ab.py CONVROUTE_ENCODE_THREAD timm:lcnet_050 squeezenet1_1 mobilenet_v2 \
  --policy calibrated --rounds 60 > "$R/encode_ab.txt" 2>&1
tail -5 "$R/encode_ab.txt"
for flag in 1 0; do
  CONVROUTE_ENCODE_THREAD=$flag timeout 35 python3 tools/host_phases.py timm:lcnet_050 224 calibrated 300 \
    > "$R/host_phases_$flag.txt" 2>&1
  head -14 "$R/host_phases_$flag.txt"
done
for i in 1 2 3 4 5; do
  CONVROUTE_ENCODE_THREAD=1 timeout 25 python3 -m convroute.cli.main run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph,convroute-seed --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)"
done > "$R/mnv2.txt"
cat "$R/mnv2.txt"
