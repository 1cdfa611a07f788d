#!/usr/bin/env bash
# GPU session, call 43 (<= $LIMIT s, default 420; carry .gl .whl .gpucache): CONVROUTE_FINISH_ASIDE (each call's next
# command buffer finished on the finisher thread, device/finisher.py) on and off, fp32 on the host-bound models and
# one GPU-bound one, each arm's second call in a row timed; then mobilenet_v2 against the graph in ten fresh
# processes, the flag on and off in turn, the host's state printed around each.
#   source .gl/prelude.sh && bash tools/gpu_session/call43.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call43; LIMIT=${LIMIT:-420}; PACK_CACHE=1; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
calibrate_unless_on_file 50 75
probed_run() {  # one mobilenet_v2 process against the graph, host state around it
  timeout "$(cap 30)" python3 tools/gpu_session/host_probe.py run --model mobilenet_v2 --policy calibrated \
    --compare torch-cuda-graph --runs 30 2>&1 | grep -E "^(host|convroute|torch-cuda-graph |GPU pass)"
}
for i in 1 2 3 4 5; do
  for flag in 1 0; do echo "== process $i, CONVROUTE_FINISH_ASIDE=$flag"; CONVROUTE_FINISH_ASIDE=$flag probed_run; done
done | tee "$R/ten.txt"
pack
timeout "$(cap 150)" python3 tools/flag_ab.py CONVROUTE_FINISH_ASIDE mobilenet_v2 squeezenet1_1 mobilenet_v3_small \
  shufflenet_v2_x0_5 timm:lcnet_050 timm:convnext_atto timm:xception41 --policy calibrated --rounds 40 --in-a-row 2 \
  > "$R/aside_f32.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/aside_f32.txt" | tail -10
pack
timeout "$(cap 80)" python3 tools/flag_ab.py CONVROUTE_FINISH_ASIDE mobilenet_v2 squeezenet1_1 shufflenet_v2_x0_5 \
  timm:lcnet_050 --policy calibrated --rounds 40 --in-a-row 2 --dtype float16 > "$R/aside_f16.txt" 2>&1
grep -v "Warning\|warnings.warn\|return cls" "$R/aside_f16.txt" | tail -7
