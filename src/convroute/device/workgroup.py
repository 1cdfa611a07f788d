"""What a compute shader asks of one workgroup, read from its WGSL: `@workgroup_size` and the bytes of its
`var<workgroup>` variables (each rounded up to 16 bytes, as WebGPU counts them against
maxComputeWorkgroupStorageSize). Gpu.pipeline checks every shader against the device's limits with it before
the driver sees the shader, so an over-limit kernel is a ValueError naming the limit, not a driver error.

The reader knows scalars, vectors, atomics, arrays, aliases and integer `const`s, which is all convroute's
shaders use; a shader with anything else (structs, matrices, override sizes) is left to the driver.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

SCALARS = {"f32": 4, "i32": 4, "u32": 4, "f16": 2}
SHORT_SCALARS = {"f": "f32", "h": "f16", "i": "i32", "u": "u32"}


@dataclass(frozen=True)
class WorkgroupNeeds:
    size: tuple[int, int, int]
    storage: int  # bytes of workgroup memory


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class _Reader:
    def __init__(self, source: str):
        self.aliases = dict(re.findall(r"\balias\s+(\w+)\s*=\s*([^;]+);", source))
        self.consts = {name: value for name, value in re.findall(r"\bconst\s+(\w+)\s*(?::\s*\w+)?\s*=\s*([^;]+);",
                                                                 source)}

    def integer(self, text: str, depth: int = 0) -> int | None:
        text = text.strip()
        if m := re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)[iu]?", text):
            return int(m[1], 0)
        if text in self.consts and depth < 8:
            return self.integer(self.consts[text], depth + 1)
        return None

    def layout(self, t: str, depth: int = 0) -> tuple[int, int] | None:
        """(size, alignment) in bytes of WGSL type `t`, or None when unknown."""
        t = t.strip()
        if depth > 16:
            return None
        if t in self.aliases:
            return self.layout(self.aliases[t], depth + 1)
        if t in SCALARS:
            return SCALARS[t], SCALARS[t]
        if m := re.fullmatch(r"vec([234])([fhiu])", t):
            t = f"vec{m[1]}<{SHORT_SCALARS[m[2]]}>"
        if m := re.fullmatch(r"vec([234])\s*<(.+)>", t):
            inner = self.layout(m[2], depth + 1)
            if inner is None:
                return None
            n, s = int(m[1]), inner[0]
            return n * s, (2 if n == 2 else 4) * s
        if m := re.fullmatch(r"atomic\s*<\s*[iu]32\s*>", t):
            return 4, 4
        if m := re.fullmatch(r"array\s*<(.+),([^,<>]+)>", t):
            inner, count = self.layout(m[1], depth + 1), self.integer(m[2])
            if inner is None or count is None:
                return None
            size, align = inner
            return count * _round_up(size, align), align
        return None


@functools.lru_cache(maxsize=1024)
def workgroup_needs(source: str) -> WorkgroupNeeds | None:
    """The workgroup size and workgroup memory of the compute shader `source`; None when it has no
    @workgroup_size or uses something this reader cannot size."""
    code = re.sub(r"//[^\n]*", "", source)
    found = re.search(r"@workgroup_size\s*\(([^)]*)\)", code)
    if found is None:
        return None
    reader = _Reader(code)
    dims = [reader.integer(d) for d in found[1].split(",") if d.strip()]
    if not dims or len(dims) > 3 or None in dims:
        return None
    storage = 0
    for _, type_text in re.findall(r"\bvar\s*<\s*workgroup\s*>\s*(\w+)\s*:\s*([^;=]+);", code):
        layout = reader.layout(type_text)
        if layout is None:
            return None
        storage += _round_up(layout[0], 16)
    return WorkgroupNeeds(tuple(dims + [1] * (3 - len(dims))), storage)


def check_workgroup(profile, source: str) -> None:
    """ValueError when the shader's workgroup exceeds a limit of `profile` (a DeviceProfile)."""
    needs = workgroup_needs(source)
    if needs is None:
        return
    problem = profile.workgroup_problem(needs.size, needs.storage)
    if problem:
        size = "x".join(str(n) for n in needs.size)
        raise ValueError(f"a compute shader with workgroup_size {size} and {needs.storage} bytes of workgroup "
                         f"memory {problem}; a kernel should have chosen a smaller tile")
