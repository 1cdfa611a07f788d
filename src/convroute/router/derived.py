"""The `derived` policy: the rule `convroute derive-rule` fitted, read from CONVROUTE_RULE (a file) or else
`<cache dir>/derived-rule.json`. Without a rule it warns once and routes as seed."""

from __future__ import annotations

import os
from pathlib import Path

from convroute.cache import cache_dir, load_record, warn_once
from convroute.device.profile import DeviceProfile
from convroute.params import ConvParams
from convroute.router.calibrated import seed_fallback
from convroute.router.rule import FORMAT, VERSION, Rule

RULE_ENV = "CONVROUTE_RULE"

def rule_path() -> Path:
    explicit = os.environ.get(RULE_ENV)
    return Path(explicit).expanduser() if explicit else cache_dir() / "derived-rule.json"


def load_rule(path: Path | None = None) -> Rule | None:
    """The rule at `path` (default rule_path()), or None with a warning when it is missing or malformed.
    Read once per change; a rule of any build is good (it names algorithms, not timings)."""
    return load_record(path or rule_path(), FORMAT, VERSION, Rule.from_json, "rule", None, same_build=False)


def derived_route(p: ConvParams, device: DeviceProfile, blocked: dict[str, str]) -> tuple[str, str]:
    rule = load_rule()
    if rule is None:
        warn_once(f"convroute: no derived rule at {rule_path()} (run `convroute derive-rule`, or set {RULE_ENV}); "
                  f"policy 'derived' routes as 'seed'")
        return seed_fallback(p, device, blocked, "no derived rule (run `convroute derive-rule`)")
    return rule.route(p, device, blocked)
