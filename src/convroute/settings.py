"""On/off switches read from the environment (CONVROUTE_FORCE_DIRECT, CONVROUTE_FUSE_RESIDUAL,
CONVROUTE_RAISE_CLOCKS, CONVROUTE_POISON): one spelling rule for all of them."""

from __future__ import annotations

import os

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """$name as a boolean: 1/true/yes/on or 0/false/no/off (any case); unset or empty gives `default`;
    anything else is a ValueError naming the variable."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ON:
        return True
    if value in OFF:
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use one of {', '.join(ON)} or {', '.join(OFF)}")
