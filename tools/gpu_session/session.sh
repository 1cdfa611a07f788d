# Sourced by a GPU session script (calls 16 on) after it sets NAME (callN) and LIMIT's default:
#   NAME=call26; LIMIT=${LIMIT:-580}; source "$(dirname "$0")/session.sh"
# It sets OUT (only the archive $OUT/$NAME.tgz goes there) and R (the call's results), CONVROUTE_CACHE_DIR (default
# .gpucache), `pack` (the archive, also run on exit; PACK_CACHE=1 adds .gpucache to it), `cap` (limits.sh) and
# `five_processes MODEL` (the model against the CUDA graph in five fresh processes, calibrated), `calibrations
# BUDGET CAP` (an fp32 and an fp16 calibration into the cache, BUDGET s each, each step capped at CAP s),
# `calibrate_unless_on_file BUDGET CAP`, `fp16_zoo` (the default zoo in fp16 against convroute fp32), `graph_zoo`
# (the default zoo against the CUDA graph, tools/zoo_h200.py, with what is left of $LIMIT), and writes
# $R/head.txt: the card, the cache's files and the kernel hash (the device copy's .git is stale, so `git log` there
# names an old commit).
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/$NAME; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=${CONVROUTE_CACHE_DIR:-$PWD/.gpucache}; mkdir -p "$CONVROUTE_CACHE_DIR"
pack() { tar czf "$OUT/$NAME.tgz" -C "${R%/*}" "$NAME" ${PACK_CACHE:+-C "$PWD" .gpucache}; }
trap pack EXIT
five_processes() {
  for i in 1 2 3 4 5; do
    timeout "$(cap 25)" python3 -m convroute.cli.main run --model "$1" --policy calibrated \
      --compare torch-cuda-graph --runs 30 2>&1 | grep -E "^(convroute|torch-cuda-graph |GPU pass)"
  done
}
calibrations() {
  for dtype in float32 float16; do
    timeout "$(cap "$2")" python3 -m convroute.cli.main calibrate --dtype $dtype --selftest-cases 0 \
      --budget "$1" --no-progress > "$R/calibrate_$dtype.txt" 2>&1
    head -3 "$R/calibrate_$dtype.txt"
  done
}
calibrate_unless_on_file() {  # calibrations BUDGET CAP, unless the cache holds a valid one in both dtypes
  python3 -c "
from convroute.calibration.profile import calibration_for
from convroute.device.gpu import get_gpu
p = get_gpu().profile
raise SystemExit(0 if all(calibration_for(p, d) for d in ('float32', 'float16')) else 1)" 2>/dev/null \
    && echo "calibrations on file" || calibrations "$1" "$2"
}
fp16_zoo() {  # the default zoo in fp16 against convroute fp32, README's H100 order (fastest call first), to the limit
  local models="timm:lcnet_050 alexnet squeezenet1_1 shufflenet_v2_x0_5 mnasnet0_5 timm:mobilenetv4_conv_small
    mobilenet_v2 resnet18 mobilenet_v3_small timm:convnext_atto timm:mobilenetv3_large_100 vgg11 timm:dla34 googlenet
    timm:resnest14d timm:ecaresnet26t timm:ghostnet_100 regnet_x_400mf timm:resnet50d efficientnet_b0
    timm:efficientnet_b0 timm:rexnet_100 resnext50_32x4d timm:mixnet_s timm:repvgg_a2 timm:hrnet_w18_small
    regnet_y_400mf timm:cspdarknet53 wide_resnet50_2 convnext_tiny inception_v3 timm:tresnet_m densenet121
    timm:res2net50_14w_8s timm:regnety_016 efficientnet_v2_s timm:xception41 timm:inception_v4"
  timeout "$(( LIMIT - SECONDS - 10 ))" python3 -m convroute.cli.main zoo $models --dtype float16 \
    --policy calibrated --compare convroute-float32 --runs 20 --no-progress --json "$R/zoo_fp16.json" \
    > "$R/zoo_fp16.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/zoo_fp16.txt" | tail -52
}
graph_zoo() {  # the default zoo against the CUDA graph with what is left of $LIMIT (fastest part first), calibrated
  OUT=$R timeout "$(( LIMIT - SECONDS - 10 ))" python3 tools/zoo_h200.py --no-calibrate --compare torch-cuda-graph \
    --budget "$(( LIMIT - SECONDS - 20 ))" > "$R/zoo.txt" 2>&1
  grep -v "Warning\|warnings.warn\|return cls" "$R/zoo.txt" | tail -48
}
source "$(dirname "${BASH_SOURCE[0]}")/limits.sh"
{ nvidia-smi --query-gpu=name --format=csv,noheader; ls "$CONVROUTE_CACHE_DIR"
  python3 -c "from convroute import cache; print('kernels', cache.kernel_hash())"
  python3 -c "from convroute.device.gpu import get_gpu; l = get_gpu().device.limits
print('storage offset alignment', l['min-storage-buffer-offset-alignment'])"; } > "$R/head.txt" 2>&1
