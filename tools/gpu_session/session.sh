# Sourced by a GPU session script (calls 16 on) after it sets NAME (callN) and LIMIT's default:
#   NAME=call26; LIMIT=${LIMIT:-580}; source "$(dirname "$0")/session.sh"
# It sets OUT (only the archive $OUT/$NAME.tgz goes there) and R (the call's results), CONVROUTE_CACHE_DIR (default
# .gpucache), `pack` (the archive, also run on exit; PACK_CACHE=1 adds .gpucache to it) and `cap` (limits.sh),
# and writes $R/head.txt: the card, the cache's files and the kernel hash (the device copy's .git is stale, so
# `git log` there names an old commit).
OUT=${OUT:-gpu_out}; R=${TMPDIR:-/tmp}/$NAME; mkdir -p "$OUT" "$R"
export CONVROUTE_CACHE_DIR=${CONVROUTE_CACHE_DIR:-$PWD/.gpucache}; mkdir -p "$CONVROUTE_CACHE_DIR"
pack() { tar czf "$OUT/$NAME.tgz" -C "${R%/*}" "$NAME" ${PACK_CACHE:+-C "$PWD" .gpucache}; }
trap pack EXIT
source "$(dirname "${BASH_SOURCE[0]}")/limits.sh"
{ nvidia-smi --query-gpu=name --format=csv,noheader; ls "$CONVROUTE_CACHE_DIR"
  python3 -c "from convroute import cache; print('kernels', cache.kernel_hash())"; } > "$R/head.txt" 2>&1
