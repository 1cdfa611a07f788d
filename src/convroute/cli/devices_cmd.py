"""`convroute devices`: every WebGPU adapter with what routing and the kernels care about; `*` = in use."""

from __future__ import annotations

import sys

from convroute.device.gpu import OPTIONAL_FEATURES, choose_adapter, list_adapters
from convroute.device.profile import DeviceProfile
from convroute.report.table import fit_text

LIMITS = ("max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroups-per-dimension",
          "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
          "max-compute-workgroup-size-x", "max-storage-buffers-per-shader-stage")


def add_arguments(parser) -> None:
    parser.add_argument("--all-features", action="store_true", help="list every feature, not only the ones "
                        f"convroute uses ({', '.join(OPTIONAL_FEATURES)})")


def run(args) -> int:
    adapters = list_adapters()
    if not adapters:
        print("no WebGPU adapter found: install a Vulkan driver (on Debian: apt-get install mesa-vulkan-drivers)",
              file=sys.stderr)
        return 1
    try:
        chosen, problem = choose_adapter(adapters), None
    except RuntimeError as err:
        chosen, problem = None, str(err)
    for i, adapter in enumerate(adapters):
        print(fit_text(describe(i, adapter, adapter is chosen, args.all_features)))
    if problem:
        print(f"no adapter in use: {problem}", file=sys.stderr)
        return 1
    print("* = the adapter convroute uses (Vulkan first, GPUs before CPUs; CONVROUTE_ADAPTER=<substring> picks "
          "by name)")
    return 0


def describe(index: int, adapter, in_use: bool, all_features: bool) -> str:
    info = adapter.info
    profile = DeviceProfile.from_adapter_info(info, adapter.limits, adapter.features)
    vendor = info.get("vendor") or "?"
    lines = [f"{'*' if in_use else ' '} [{index}] {info['device']}",
             f"      vendor   {vendor} (id 0x{int(info.get('vendor_id', 0)):X}, family {profile.family})",
             f"      type     {info['adapter_type']}, backend {info['backend_type']}",
             f"      driver   {info.get('description') or '?'}"]
    for name in LIMITS:
        if name in adapter.limits:
            lines.append(f"      {name:<40} {_size(name, adapter.limits[name])}")
    if all_features:
        lines.append("      features " + ", ".join(sorted(adapter.features)))
    else:
        lines.append("      features " + ", ".join(f"{f} {'yes' if f in adapter.features else 'no'}"
                                               for f in OPTIONAL_FEATURES))
    return "\n".join(lines)


def _size(name: str, value: int) -> str:
    if "size" in name and "workgroup-size" not in name and value >= 1 << 20:
        return f"{value} ({value / (1 << 20):.0f} MiB)"
    return str(value)
