"""The denylist: algorithms (optionally only on a range of shapes) known to give wrong results, or to be
unusable, on some vendor / device / driver version. It applies whatever the routing policy.

Read from the shipped convroute/data/denylist.json plus the user's own files named by CONVROUTE_DENYLIST
(paths separated by os.pathsep). Format::

    {"format": "convroute-denylist", "version": 1,
     "entries": [
       {"algorithm": "im2col",                 # required: the algorithm excluded
        "reason": "wrong results, driver bug #123",  # required: shown in Decision.reason
        "vendor": "mali",                      # optional: family name or PCI vendor id (5045 or "0x13b5")
        "device": "Mali-G7[0-9]",              # optional: regular expression searched in the adapter name
        "driver": "r3[0-9]p",                  # optional: regular expression searched in the driver string
        "driver_from": "23.0", "driver_below": "23.3",  # optional: first dotted number in the driver string
        "shapes": {"kernel": [5, 7], "c_out": [256, null], "stride": 2, "depthwise": true}}]}  # optional

An entry matches when every key it has matches (absent keys match everything; a version range never
matches a driver string without a version). In `shapes`, a number means equal, [lo, hi] an inclusive range
(null = open), true/false a flag; keys: n, c_in, c_out, h, w, ho, wo, kh, kw, groups, and the pairs
kernel/stride/padding/dilation (both elements must match), depthwise, pointwise, transposed.
A malformed entry or file is skipped with a warning.
"""

from __future__ import annotations

import functools
import json
import os
import re
from importlib import resources
from pathlib import Path

from convroute.cache import load_once, warn_once
from convroute.device.profile import FAMILIES, DeviceProfile
from convroute.params import ConvParams

FORMAT, VERSION = "convroute-denylist", 1
SCALARS = ("n", "c_in", "c_out", "h", "w", "ho", "wo", "kh", "kw", "groups")
PAIRS = {"kernel": lambda p: (p.kh, p.kw), "stride": lambda p: p.stride, "padding": lambda p: p.padding,
         "dilation": lambda p: p.dilation}
FLAGS = {"depthwise": lambda p: p.is_depthwise, "pointwise": lambda p: p.is_pointwise,
         "transposed": lambda p: p.transposed}
ENTRY_KEYS = {"algorithm", "reason", "vendor", "device", "driver", "driver_from", "driver_below", "shapes"}


def denied(device: DeviceProfile, p: ConvParams) -> dict[str, str]:
    """{algorithm: reason} of the denylist entries that match this device and shape."""
    out: dict[str, str] = {}
    for origin, entry in entries():
        if entry["algorithm"] not in out and _device_matches(entry, device) and _shape_matches(entry, p):
            out[entry["algorithm"]] = f"denylisted ({origin}): {entry['reason']}"
    return out


def entries() -> list[tuple[str, dict]]:
    """(origin, entry) for every valid entry of the shipped and the user's denylists (each read once per change)."""
    found = list(_shipped())
    for name in filter(None, os.environ.get("CONVROUTE_DENYLIST", "").split(os.pathsep)):
        path = Path(name).expanduser()
        user = load_once(path, _read)
        if user is None:
            warn_once(f"convroute: cannot read the denylist {path}: no such file; ignoring it")
        found += user or []
    return found


@functools.cache
def _shipped() -> tuple[tuple[str, dict], ...]:
    return tuple(_parse(resources.files("convroute").joinpath("data/denylist.json").read_text(), "shipped"))


def _read(path: Path) -> list[tuple[str, dict]]:
    try:
        text = path.read_text()
    except OSError as err:
        warn_once(f"convroute: cannot read the denylist {path}: {err}; ignoring it")
        return []
    return _parse(text, str(path))


def _parse(text: str, origin: str) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        warn_once(f"convroute: the denylist {origin} is not valid JSON ({err}); ignoring it")
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        warn_once(f"convroute: {origin} is not a {FORMAT} version {VERSION} file; ignoring it")
        return []
    good = []
    for i, entry in enumerate(data.get("entries", [])):
        problem = check_entry(entry)
        if problem:
            warn_once(f"convroute: denylist {origin} entry {i} skipped: {problem}")
        else:
            good.append((origin, entry))
    return good


def check_entry(entry) -> str | None:
    if not isinstance(entry, dict):
        return "an entry must be a JSON object"
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        return f"unknown key(s) {', '.join(sorted(unknown))}"
    if not isinstance(entry.get("algorithm"), str) or not isinstance(entry.get("reason"), str):
        return "'algorithm' and 'reason' must be strings"
    for key in ("device", "driver"):
        if key in entry:
            try:
                re.compile(entry[key])
            except (re.error, TypeError) as err:
                return f"'{key}' is not a regular expression: {err}"
    for key in ("driver_from", "driver_below"):
        if key in entry and _version(str(entry[key])) is None:
            return f"'{key}' must be a dotted version like \"23.1\", got {entry[key]!r}"
    if "vendor" in entry and _vendor(entry["vendor"]) is None:
        return f"'vendor' must be a family ({', '.join(FAMILIES)}) or a PCI vendor id, got {entry['vendor']!r}"
    shapes = entry.get("shapes", {})
    if not isinstance(shapes, dict):
        return "'shapes' must be an object"
    for key, cond in shapes.items():
        if key in FLAGS:
            if not isinstance(cond, bool):
                return f"shape key '{key}' takes true or false"
        elif key in SCALARS or key in PAIRS:
            if not _valid_condition(cond):
                return f"shape key '{key}' takes a number or [lo, hi] (null for open), got {cond!r}"
        else:
            return f"unknown shape key '{key}'"
    return None


def _valid_condition(cond) -> bool:
    if isinstance(cond, bool):
        return False
    if isinstance(cond, int):
        return True
    return (isinstance(cond, list) and len(cond) == 2
            and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in cond))


def _vendor(value):
    """A family name or a vendor id (int or hex/decimal text) -> ("family", name) / ("id", int); None if bad."""
    if isinstance(value, str) and value.lower() in FAMILIES:
        return ("family", value.lower())
    try:
        return ("id", int(value, 0) if isinstance(value, str) else int(value))
    except (TypeError, ValueError):
        return None


def _version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"\d+(?:\.\d+)+", text)
    return tuple(int(v) for v in m.group(0).split(".")) if m else None


def _device_matches(entry: dict, device: DeviceProfile) -> bool:
    if "vendor" in entry:
        kind, value = _vendor(entry["vendor"])
        if (device.family if kind == "family" else device.vendor_id) != value:
            return False
    if "device" in entry and not re.search(entry["device"], device.name, re.IGNORECASE):
        return False
    if "driver" in entry and not re.search(entry["driver"], device.driver, re.IGNORECASE):
        return False
    if "driver_from" in entry or "driver_below" in entry:
        version = _version(device.driver)
        if version is None:
            return False
        if "driver_from" in entry and version < _version(str(entry["driver_from"])):
            return False
        if "driver_below" in entry and version >= _version(str(entry["driver_below"])):
            return False
    return True


def _shape_matches(entry: dict, p: ConvParams) -> bool:
    for key, cond in entry.get("shapes", {}).items():
        if key in FLAGS:
            ok = FLAGS[key](p) == cond
        elif key in PAIRS:
            ok = all(_within(v, cond) for v in PAIRS[key](p))
        else:
            ok = _within(getattr(p, key), cond)
        if not ok:
            return False
    return True


def _within(value: int, cond) -> bool:
    if isinstance(cond, int):
        return value == cond
    lo, hi = cond
    return (lo is None or value >= lo) and (hi is None or value <= hi)
