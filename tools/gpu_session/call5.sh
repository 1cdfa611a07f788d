#!/usr/bin/env bash
# GPU session, call 5 (about 4 min; after calls 2-4, or first where only a few minutes are lent): session 18's
# kernels on the GPU. The CPU adapters' texture kernels forced onto it (the repack and column gathers, now an
# invocation per row: test_direct, test_gemm_cpu, test_depthwise_cpu), TexLinear, both squeeze-excitation forms,
# both elementwise forms and the pools' two loops (their tests; CONVROUTE_LINEAR_FUZZ random linears of each
# kind), the conv fuzz; then whether the fused
# squeeze-excitation pays on this GPU (tools/flag_ab.py CONVROUTE_SQUEEZE_EXCITE, off on GPUs until this says).
#   source .gl/prelude.sh && bash tools/gpu_session/call5.sh      (carry .gl .whl [.gpucache]; results under $OUT)
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
{ git log --oneline -1
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_direct.py tests/test_gemm_cpu.py \
    tests/test_depthwise_cpu.py tests/test_fuse_squeeze_excite.py tests/test_ops_elementwise.py tests/test_pool.py \
    tests/test_frontend_layout.py 2>&1 | tail -3
  CONVROUTE_LINEAR_FUZZ=300 timeout 90 python3 -m pytest -q -s -p no:cacheprovider tests/test_linear_gemm.py 2>&1 \
    | grep -E "fuzz|passed|failed|wrong"
  CONVROUTE_FUZZ=200 timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py 2>&1 \
    | grep -E "fuzz|passed|failed|wrong"; } 2>&1 | tee "$OUT/kernels.txt"
timeout 150 python3 tools/flag_ab.py CONVROUTE_SQUEEZE_EXCITE efficientnet_b0 mobilenet_v3_small regnet_y_400mf \
  timm:efficientnet_b0 timm:mobilenetv3_large_100 --policy calibrated --rounds 20 2>&1 | tail -8 \
  | tee "$OUT/squeeze_excite.txt"
