"""Shared test set-up: poisoned outputs, a float64 PyTorch reference and the relative-error check."""

from __future__ import annotations

import os

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
os.environ["CONVROUTE_POISON"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import convroute.api  # noqa: E402
from convroute.kernels import ALGORITHMS  # noqa: E402
from convroute.kernels.common import F16_FEATURE, Precision  # noqa: E402
from convroute.measure.reference import norm_relative_error as rel_error  # noqa: E402
from convroute.measure.reference import torch_reference  # noqa: E402
from convroute.measure.workload import random_inputs  # noqa: E402, F401 (the tests draw their inputs with it)
from convroute.params import ConvParams  # noqa: E402

convroute.api.POISON = True  # outputs start as NaN, so an element no kernel writes fails the check

TOLERANCE = 1e-4
# The header every fp16 kernel's shaders start with: f16 storage, f16 sums or f32 ones (winograd4's GEMM), an
# f16 or a float32 input.
F16_HEADERS = tuple(Precision.parse("float16", sums, x).wgsl() for sums in ("float16", "float32")
                    for x in (None, "float32"))
ACTIVATIONS = (None, "relu", "relu6", ("clamp", -0.5, 0.75), "hardswish", "silu", "sigmoid")


@pytest.fixture
def small_direct_tile(monkeypatch):
    """CPU adapters' direct kernel on its smallest register tile: small test shapes still get several tiles."""
    from convroute.kernels import direct_cpu
    monkeypatch.setattr(direct_cpu, "TILES", (direct_cpu.RegisterTile(4, 4),))


@pytest.fixture
def k_splits(monkeypatch):
    """GEMM launches keep the K splits their tile rule gives (gemm.slice_plan left out): tests of the split path,
    which GPUs still take past SLICE_MACS or where two K slices do not fit a workgroup."""
    from convroute.kernels import gemm
    monkeypatch.setattr(gemm, "slice_plan", lambda tile, splits, *args, **kwargs: (tile, splits))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """Tests see no routing overrides from the caller's environment, and no calibration/autotune files or
    denylists of the user's: each test gets an empty cache directory."""
    for name in ("CONVROUTE_FORCE_DIRECT", "CONVROUTE_POLICY", "CONVROUTE_ADAPTER", "CONVROUTE_DENYLIST",
                 "CONVROUTE_TIMING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVROUTE_CACHE_DIR", str(tmp_path_factory.mktemp("convroute-cache")))


def applicable(p: ConvParams) -> list[str]:
    """Registered algorithms that can run `p` (grows as algorithms land in ALGORITHMS)."""
    return [name for name, kernel in ALGORITHMS.items() if kernel.unsupported(p) is None]


def activate(y, activation):
    import torch

    if activation is None or activation == "none":
        return y
    if isinstance(activation, tuple):
        return torch.clamp(y, activation[1], activation[2])
    return {
        "relu": torch.relu,
        "relu6": lambda v: torch.clamp(v, 0.0, 6.0),
        "hardswish": lambda v: v * torch.clamp(v + 3.0, 0.0, 6.0) / 6.0,
        "silu": lambda v: v * torch.sigmoid(v),
        "sigmoid": torch.sigmoid,
    }[activation](y)


def reference(p: ConvParams, x, w, b=None, activation=None) -> np.ndarray:
    """PyTorch's conv2d / conv_transpose2d on float64 copies of the same inputs, then the activation."""
    import torch

    return activate(torch.from_numpy(torch_reference(p, x, w, b)), activation).numpy()


def assert_matches(out, ref, what: str = "", tol: float = TOLERANCE) -> None:
    """Same shape, every element written and finite where the reference is, relative error < tol."""
    out = np.asarray(out)
    assert out.dtype == np.float32, f"{what}: result dtype {out.dtype}, expected float32"
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    bad = ~np.isfinite(out) & np.isfinite(ref)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {out.size} outputs are NaN/Inf (unwritten?), "
                           f"first at {tuple(int(i[0]) for i in np.nonzero(bad))}")
    err = rel_error(out, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:g}"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: the test opens the real device (others may forbid GPU access)")


# The longest tests on lavapipe, started first so that with pytest-xdist (`-n 2`) no worker is left running one of
# them alone at the end.
LONGEST_FIRST = ("tests/test_fuzz.py::test_fuzz[float16]", "tests/test_fuzz.py::test_fuzz[float32]",
                 "tests/test_gemm_cpu.py::test_both_styles_match_torch",
                 "tests/test_frontend_fp16.py::test_torchvision_model_in_float16[mobilenet_v2")


def pytest_collection_modifyitems(config, items):
    rank = {prefix: i for i, prefix in enumerate(LONGEST_FIRST)}

    def order(item):
        return next((rank[prefix] for prefix in LONGEST_FIRST if item.nodeid.startswith(prefix)), len(rank))

    items.sort(key=order)  # stable: the rest keep their order


def run_guarded(gpu, dispatches_into, count: int, precision: Precision) -> tuple[np.ndarray, float]:
    """Run the dispatches `dispatches_into(y)` builds into a NaN-poisoned output of `count` elements plus one
    guard element: (the output as float64, the guard, NaN unless a kernel wrote past the output)."""
    y = gpu.empty(precision.itemsize * (count + 1) + 4)
    gpu.fill(y, np.nan, precision.numpy)
    flat = gpu.run_and_read(dispatches_into(y), y, (count + 1,), precision.numpy).astype(np.float64)
    return flat[:-1], float(flat[-1])


class RandomCases:
    """An env-scaled random test: $NAME cases (`default` when unset), drawn from $NAME_SEED (`seed` when unset)
    over the dtypes the adapter has; `check` collects the wrong ones, `finish` prints the counts and fails on any."""

    def __init__(self, gpu, name: str, what: str, seed: int, default: int = 6):
        self.name, self.what = name, what
        self.count = int(os.environ.get(name, str(default)))
        self.seed = int(os.environ.get(f"{name}_SEED", str(seed)))
        self.rng = np.random.default_rng(self.seed)
        self.dtypes = ["float32"] + (["float16"] if F16_FEATURE in gpu.profile.features else [])
        self.wrong: list[str] = []

    def dtype(self) -> str:
        return self.dtypes[int(self.rng.integers(len(self.dtypes)))]

    def check(self, ok: bool, case: str) -> None:
        if not ok:
            self.wrong.append(case)

    def finish(self) -> None:
        print(f"{self.what}: {self.count} cases (seed {self.seed}), {len(self.wrong)} wrong")
        assert not self.wrong, "\n".join(self.wrong)
