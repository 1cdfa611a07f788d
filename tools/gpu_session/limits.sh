# Sourced by the GPU session scripts after they set LIMIT: `timeout "$(cap N)" ...` gives a step N seconds, or
# what is left of $LIMIT when that is less (at least 5), so every call returns its archive within the limit.
cap() { local left=$((LIMIT - SECONDS)); echo $(( left < $1 ? (left > 5 ? left : 5) : $1 )); }
