#!/usr/bin/env bash
# GPU session, call 42 (<= $LIMIT s, default 420; carry .gl .whl .gpucache): timm:repvgg_a2 in the zoo against the
# CUDA graph (summed convs on: README's row), mobilenet_v2 against the graph in five fresh processes with the host's
# state printed around each (tools/gpu_session/host_probe.py), then five more each pinned to one CPU, then
# CONVROUTE_HOST_CLOSE_CALLS on and off in fp16 on three models where fp16 trails fp32.
#   source .gl/prelude.sh && bash tools/gpu_session/call42.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call42; LIMIT=${LIMIT:-420}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
timeout "$(cap 40)" python3 -m convroute.cli.main zoo timm:repvgg_a2 --policy calibrated --compare torch-cuda-graph \
  --runs 30 --no-progress --json "$R/zoo_repvgg.json" > "$R/zoo_repvgg.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/zoo_repvgg.txt" | tail -8
pack
probed_run() {  # probed_run [taskset -c N]: one mobilenet_v2 process against the graph, host state around it
  timeout "$(cap 30)" "$@" python3 tools/gpu_session/host_probe.py run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph --runs 30 2>&1 | grep -E "^(host|convroute|torch-cuda-graph |GPU pass)"
}
for i in 1 2 3 4 5; do echo "== process $i"; probed_run; done | tee "$R/five.txt"
pack
for cpu in 3 6 9 12 15; do echo "== process pinned to cpu $cpu"; probed_run taskset -c $cpu; done | tee "$R/five_pinned.txt"
pack
timeout "$(cap 110)" python3 tools/flag_ab.py CONVROUTE_HOST_CLOSE_CALLS squeezenet1_1 shufflenet_v2_x0_5 \
  timm:hrnet_w18_small --policy calibrated --rounds 40 --dtype float16 > "$R/host_close_f16.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/host_close_f16.txt" | tail -6
