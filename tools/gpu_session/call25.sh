#!/usr/bin/env bash
# GPU session, call 25 (after call26.sh and call27.sh, <= $LIMIT s, default 440; carry .gl .whl .gpucache with
# both dtypes' calibrations): issue 26's fp16 item over the whole default zoo, not only call26's six: every model in
# fp16 against convroute in fp32 in the same rounds (tools/zoo_h200.py, a process per part; the JSON is rewritten
# after each model, so a cut run still reports).
#   source .gl/prelude.sh && bash tools/gpu_session/call25.sh   (carry .gl .whl .gpucache; results under $OUT)
set -o pipefail
NAME=call25; LIMIT=${LIMIT:-440}; source "$(dirname "$0")/session.sh"
cat "$R/head.txt"
left=$((LIMIT - SECONDS - 15))
OUT=$R timeout "$left" python3 tools/zoo_h200.py --no-calibrate --dtype float16 --compare convroute-float32 \
  --runs 20 --budget $((left - 10)) > "$R/zoo_fp16.txt" 2>&1
tail -48 "$R/zoo_fp16.txt"
