"""What the self-test found on one device and dtype, kept beside the calibration
(`selftest[-<dtype>]-<device>-<hash>.json`, written atomically), and what routing must therefore avoid.

An algorithm that gave a wrong result (or raised) on a conv is excluded, under every policy, for that conv's
shape class: the four properties a kernel's index arithmetic branches on, transposed or not, groups > 1,
stride > 1 and dilation > 1 (16 classes; issue 9's miscompile hit transposed convs with groups, stride and
dilation). An algorithm wrong in WHOLE_DTYPE_AFTER classes or more is not trusted on any shape of the dtype.
Findings of earlier runs on the same device and driver are kept until `convroute selftest --fresh`: a shorter
run that misses a failure must not clear it. Routing in float16 also obeys the float32 findings (an index
bug is wrong in both dtypes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from convroute.cache import device_file, file_header, load_record, write_json
from convroute.device.profile import DeviceProfile
from convroute.kernels.common import dtype_name
from convroute.params import ConvParams

FORMAT, VERSION = "convroute-selftest", 1
WHOLE_DTYPE_AFTER = 3


def shape_class(p: ConvParams) -> str:
    return ", ".join(("conv_transpose2d" if p.transposed else "conv2d",
                      "groups>1" if p.groups > 1 else "groups=1",
                      "stride>1" if max(p.stride) > 1 else "stride=1",
                      "dilation>1" if max(p.dilation) > 1 else "dilation=1"))


@dataclass
class Finding:
    """An algorithm wrong on one shape class: how often, the worst relative error and its one-line repro."""

    algorithm: str
    shape_class: str
    wrong: int
    worst_error: float
    repro: str
    when: str = ""


@dataclass
class AlgorithmStats:
    runs: int = 0
    wrong: int = 0
    worst_error: float = 0.0
    worst_repro: str = ""


@dataclass
class SelftestResult:
    device_key: str
    device: dict
    dtype: str = "float32"
    cases: int = 0
    seconds: float = 0.0
    seed: int = 0
    created: str = ""
    stats: dict[str, AlgorithmStats] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def excluded(self, p: ConvParams) -> dict[str, str]:
        """{algorithm: why} for the algorithms this result forbids on p."""
        by_algorithm: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_algorithm.setdefault(f.algorithm, []).append(f)
        out = {}
        cls = shape_class(p)
        for name, found in by_algorithm.items():
            worst = max(found, key=lambda f: f.worst_error)
            if len(found) >= WHOLE_DTYPE_AFTER:
                out[name] = (f"wrong on {len(found)} shape classes in {self.dtype}, so not trusted on any "
                             f"(worst relative error {worst.worst_error:.3g}; repro: {worst.repro})")
            elif hit := next((f for f in found if f.shape_class == cls), None):
                out[name] = (f"wrong {hit.wrong}x on {cls} convs in {self.dtype} (worst relative error "
                             f"{hit.worst_error:.3g}, {hit.when}; repro: {hit.repro})")
        return out

    def merged_with(self, older: SelftestResult | None) -> SelftestResult:
        """This run's statistics, with the findings of `older` that this run did not make again."""
        if older is None:
            return self
        mine = {(f.algorithm, f.shape_class) for f in self.findings}
        kept = [f for f in older.findings if (f.algorithm, f.shape_class) not in mine]
        return SelftestResult(self.device_key, self.device, self.dtype, self.cases, self.seconds, self.seed,
                              self.created, self.stats, self.findings + kept)

    def to_json(self) -> dict:
        return file_header(FORMAT, VERSION, self.device_key, self.dtype) | {
                "device": self.device, "cases": self.cases, "seconds": self.seconds, "seed": self.seed,
                "created": self.created, "stats": {n: asdict(s) for n, s in self.stats.items()},
                "findings": [asdict(f) for f in self.findings]}

    @classmethod
    def from_json(cls, data: dict) -> SelftestResult:
        stats = {str(n): AlgorithmStats(int(s["runs"]), int(s["wrong"]), float(s["worst_error"]),
                                        str(s["worst_repro"])) for n, s in data.get("stats", {}).items()}
        findings = [Finding(str(f["algorithm"]), str(f["shape_class"]), int(f["wrong"]), float(f["worst_error"]),
                            str(f["repro"]), str(f.get("when", ""))) for f in data.get("findings", [])]
        return cls(str(data["device_key"]), dict(data.get("device", {})), dtype_name(data.get("dtype", "float32")),
                   int(data.get("cases", 0)), float(data.get("seconds", 0.0)), int(data.get("seed", 0)),
                   str(data.get("created", "")), stats, findings)


def selftest_path(profile: DeviceProfile, dtype: str = "float32") -> Path:
    return device_file("selftest", profile.key, dtype_name(dtype))


def save_selftest(result: SelftestResult) -> Path | None:
    path = device_file("selftest", result.device_key, result.dtype)
    return path if write_json(path, result.to_json()) else None


def load_selftest(profile: DeviceProfile, dtype: str = "float32") -> SelftestResult | None:
    """This device's self-test result in `dtype`, or None (with a warning when a file exists but is corrupt,
    foreign or of another format). Read once per change."""
    dtype = dtype_name(dtype)
    return load_record(selftest_path(profile, dtype), FORMAT, VERSION, SelftestResult.from_json, "self-test result",
                       profile.key, dtype, remedy="run `convroute selftest`")


def selftest_exclusions(profile: DeviceProfile, p: ConvParams, dtype: str = "float32") -> dict[str, str]:
    """{algorithm: why} that this device's self-tests forbid for p in `dtype` (float16 routing also obeys the
    float32 self-test)."""
    dtype = dtype_name(dtype)
    out: dict[str, str] = {}
    for which in dict.fromkeys((dtype, "float32")):
        result = load_selftest(profile, which)
        if result is None:
            continue
        label = "self-test" if which == dtype else f"{which} self-test"
        for name, why in result.excluded(p).items():
            out.setdefault(name, f"excluded by this device's {label}: {why}")
    return out
