#!/usr/bin/env bash
# GPU session 21, call 9 (<= ~5 min): mixnet_s in float16 with the sibling merge on and off (call 8 printed rel.
# err 5.1e-02 there), and timm resnet50d's nodes in float16 vs float32 (call 8: fp16 1.61x fp32).
#   source .gl/prelude.sh && bash tools/gpu_session/call9.sh   (carry .gl .whl .gpucache)
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/call9; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=$PWD/.gpucache
pack() { tar czf "$OUT/call9.tgz" -C "${R%/*}" call9; }
trap pack EXIT
for m in 1 0; do
  CONVROUTE_MERGE_SIBLINGS=$m timeout 60 python3 -m convroute.cli.main zoo timm:mixnet_s --dtype float16 --runs 5 \
    --compare "" --policy calibrated --no-progress > "$R/mixnet_fp16_merge$m.txt" 2>&1
  grep -E "mixnet" "$R/mixnet_fp16_merge$m.txt" | head -3
done
CONVROUTE_MERGE_SIBLINGS=1 timeout 50 python3 -m convroute.cli.main zoo timm:mixnet_s --dtype float16 --runs 5 \
  --compare "" --policy seed --no-progress > "$R/mixnet_fp16_seed.txt" 2>&1
grep -E "mixnet" "$R/mixnet_fp16_seed.txt" | head -3
timeout 120 python3 tools/gpu_session/dtype_nodes.py timm:resnet50d > "$R/resnet50d_nodes.txt" 2>&1
tail -30 "$R/resnet50d_nodes.txt"
