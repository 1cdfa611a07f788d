#!/usr/bin/env bash
# GPU session, call 1 (about 9 min): the GPU fuzz of every kernel and op that has run only on lavapipe and
# SwiftShader, and the browser bundles replayed natively. Run from the repository root on the device machine:
#   source .gl/prelude.sh && bash tools/gpu_session/call1.sh      (carry .gl .whl; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache; mkdir -p "$CONVROUTE_CACHE_DIR"
{ git log --oneline -1; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, wgpu; print('torch', torch.__version__, 'wgpu', wgpu.__version__)"; } 2>&1 | tee "$OUT/head.txt"
CONVROUTE_FUZZ=400 timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py -k test_fuzz 2>&1 \
  | grep -v '^\.*$' | tail -30 | tee "$OUT/fuzz.txt"
CONVROUTE_DILATED_FUZZ=300 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_direct_dilated.py \
  tests/test_direct.py 2>&1 | tail -8 | tee "$OUT/fuzz_dilated.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_ops_reduce.py tests/test_ops_elementwise.py \
  tests/test_conv1d.py tests/test_pool.py tests/test_fuse_views.py tests/test_fuse_squeeze_excite.py \
  tests/test_web_replay.py 2>&1 | tail -12 | tee "$OUT/op_tests.txt"
timeout 40 python3 tools/fuzz_ops_reduce.py 100 0 2>&1 | tail -8 | tee "$OUT/fuzz_ops.txt"
timeout 90 python3 tools/replay_bundles.py --size 224 2>&1 | tail -40 | tee "$OUT/replay_bundles.txt"
