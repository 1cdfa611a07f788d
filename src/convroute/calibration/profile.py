"""A device's calibration profile: what `convroute calibrate` measured on the grid (calibration.run), kept per
device and dtype in the cache directory, and the routing model fitted from it.

The profile file holds the raw measurements (times and errors per grid shape), the algorithms excluded for
wrong results, and how it was measured; the routing model is fitted from the samples when the file is
loaded (~0.2 s), so a better model needs no re-measurement.

One profile per device and dtype: `convroute calibrate --dtype float16` measures the grid with f16 storage
(f32 sums) and keeps it in its own file; exclusions and the correctness bound are per dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convroute.cache import device_file, file_header, load_record, write_json
from convroute.calibration.coverage import Coverage
from convroute.calibration.model import CostModel
from convroute.device.profile import DEFAULT_LIMITS, DeviceProfile
from convroute.kernels.common import dtype_name
from convroute.params import ConvParams, params_from_dict, params_to_dict

FORMAT, VERSION = "convroute-calibration", 1
CLOSE_CALL_MAX = 2.0
CLOSE_CALL_REGRETS = 3.0  # older files (no median error): chosen on lavapipe quick calibrations


@dataclass
class Sample:
    params: ConvParams
    times_ms: dict[str, float]
    errors: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)  # algorithm -> why it could not run this shape


@dataclass
class Calibration:
    device_key: str
    device: dict
    grid: str
    timing: str
    samples: list[Sample]
    excluded: dict[str, str] = field(default_factory=dict)  # algorithm -> why (a wrong result, an error)
    created: str = ""
    seconds: float = 0.0
    complete: bool = True
    dtype: str = "float32"  # storage of activations and weights during the measurements
    model_check: dict = field(default_factory=dict)  # calibrate's leave-one-out report (model.loo_report)
    _model: object = None
    _coverage: object = None

    @property
    def model(self):
        """The fitted routing model (calibration.model.CostModel), fitted on first use; its kernels' launch plans
        are those on the stored device profile."""
        if self._model is None:
            self._model = CostModel.fit(self.samples, self.excluded, self.profile, self.dtype)
        return self._model

    @property
    def close_call(self) -> float:
        """Predicted times closer than this ratio are a close call: two predictions, each off by the model's
        median leave-one-out error in opposite directions, would swap (at most CLOSE_CALL_MAX). Files from before
        calibrate kept that error: 1 plus CLOSE_CALL_REGRETS times the mean regret; 1 (none) without either."""
        error = self.model_check.get("median_error")
        if isinstance(error, int | float) and error > 0:
            return min(CLOSE_CALL_MAX, (1.0 + float(error)) ** 2)
        regret = self.model_check.get("mean_regret")
        if not isinstance(regret, int | float) or not regret > 0:
            return 1.0
        return min(CLOSE_CALL_MAX, 1.0 + CLOSE_CALL_REGRETS * float(regret))

    @property
    def coverage(self) -> Coverage:
        """The measured shapes, to tell a conv the model interpolates from one it extrapolates to."""
        if self._coverage is None:
            self._coverage = Coverage([s.params for s in self.samples if s.times_ms])
        return self._coverage

    @property
    def profile(self) -> DeviceProfile | None:
        """The measured device as a DeviceProfile (its family, limits and features) when the file stores its
        limits (calibrations since the cost model's plan features); None for older files, whose model then has
        no plan features rather than plans for limits the device may not have."""
        return stored_profile(self.device) if "limits" in self.device else None

    def to_json(self) -> dict:
        return file_header(FORMAT, VERSION, self.device_key, self.dtype) | {
            "device": self.device, "grid": self.grid, "timing": self.timing, "created": self.created,
            "seconds": self.seconds, "complete": self.complete, "excluded": self.excluded,
            "model_check": self.model_check,
            "samples": [{"params": params_to_dict(s.params), "times_ms": s.times_ms, "errors": s.errors,
                         "failed": s.failed} for s in self.samples]}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        samples = []
        for item in data["samples"]:
            times = {str(k): float(v) for k, v in item["times_ms"].items()}
            if any(not v > 0 for v in times.values()):
                raise ValueError("a sample has a non-positive time")
            errors = {str(k): float(v) for k, v in item.get("errors", {}).items()}
            failed = {str(k): str(v) for k, v in item.get("failed", {}).items()}
            samples.append(Sample(params_from_dict(item["params"]), times, errors, failed))
        excluded = {str(k): str(v) for k, v in data.get("excluded", {}).items()}
        return cls(str(data["device_key"]), dict(data.get("device", {})), str(data.get("grid", "")),
                   str(data.get("timing", "")), samples, excluded, str(data.get("created", "")),
                   float(data.get("seconds", 0.0)), bool(data.get("complete", True)),
                   dtype_name(data.get("dtype", "float32")), _model_check(data.get("model_check", {})))


def _model_check(data) -> dict:
    if not isinstance(data, dict):
        raise ValueError("its model_check is not a record")
    return {str(k): v for k, v in data.items()}


def device_record(profile: DeviceProfile) -> dict:
    return {"name": profile.name, "driver": profile.driver, "backend": profile.backend, "family": profile.family,
            "vendor_id": profile.vendor_id, "adapter_type": profile.adapter_type}


def calibrated_device(profile: DeviceProfile) -> dict:
    """device_record plus what the cost model's launch plans read: the device's limits and features."""
    return device_record(profile) | {"limits": dict(profile.limits), "features": sorted(profile.features)}


def stored_profile(device: dict) -> DeviceProfile:
    """A DeviceProfile from a stored device record (calibrated_device or device_record), without the GPU."""
    limits = DEFAULT_LIMITS | {str(k): int(v) for k, v in device.get("limits", {}).items()}
    return DeviceProfile(family=str(device.get("family", "unknown")), name=str(device.get("name", "")),
                         driver=str(device.get("driver", "")), vendor_id=int(device.get("vendor_id", 0)),
                         backend=str(device.get("backend", "")), adapter_type=str(device.get("adapter_type", "")),
                         limits=limits, features=frozenset(map(str, device.get("features", ()))))


def profile_path(profile: DeviceProfile, dtype: str = "float32") -> Path:
    return device_file("calibration", profile.key, dtype_name(dtype))


def calibrate_command(dtype: str = "float32") -> str:
    return "convroute calibrate" + ("" if dtype == "float32" else f" --dtype {dtype}")


def save_calibration(cal: Calibration) -> Path | None:
    path = device_file("calibration", cal.device_key, cal.dtype)
    return path if write_json(path, cal.to_json()) else None


def load_calibration(profile: DeviceProfile, dtype: str = "float32") -> Calibration | None:
    """This device's calibration in `dtype` from the cache directory, or None (with a warning when a file
    exists but is corrupt, from another device, in another dtype or of another format). Read once per change."""
    dtype = dtype_name(dtype)
    return load_record(profile_path(profile, dtype), FORMAT, VERSION, _measured, "calibration", profile.key, dtype,
                       remedy=f"run `{calibrate_command(dtype)}`")


def _measured(data: dict) -> Calibration:
    cal = Calibration.from_json(data)
    if not cal.samples:
        raise ValueError("it holds no measurements")
    return cal


def calibration_for(profile: DeviceProfile, dtype: str = "float32") -> Calibration | None:
    """The calibration that routing in `dtype` uses: this dtype's, else the float32 one (its `.dtype` says
    which; callers must say so when it differs), else None."""
    dtype = dtype_name(dtype)
    cal = load_calibration(profile, dtype)
    if cal is None and dtype != "float32":
        cal = load_calibration(profile, "float32")
    return cal
