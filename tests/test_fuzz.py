"""Differential fuzzing: hypothesis draws small convs (bench.selftest.draw_case: kinds, groups, per-axis
kernels 1-7, strides and dilations 1-3, paddings, output_padding, batch, bias, every activation) and each one
runs with every applicable algorithm forced and under every policy, against torch float64, outputs poisoned.

CONVROUTE_FUZZ=N: cases in all (default 280, for CI's time on lavapipe, which compiles each pipeline at its first
use), split over the dtypes the adapter has; CONVROUTE_FUZZ_SEED=S replays a run (the seed is printed). A wrong
result fails with one line that reproduces it. Also here: issue 9's two transposed repros, and a scan of every
kernel's WGSL for signed remainders (`%` on i32), which Vulkan leaves undefined for negative operands and NVIDIA
got wrong.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from convroute.bench.selftest import (
    Case,
    Tally,
    check_case,
    draw_case,
    load_reference_backend,
    random_picker,
    single_threaded_torch,
)
from convroute.calibration import profile as calib
from convroute.calibration.grid import full_grid, tiny_grid
from convroute.device.gpu import Dispatch, Gpu, get_gpu
from convroute.kernels import ALGORITHMS, direct_cpu
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.measure.timing import TimingSettings
from convroute.params import make_params, params_key
from convroute.router import POLICIES
from convroute.router import autotune as autotune_mod
from convroute.router import refine as refine_mod

load_reference_backend()  # torch before the GPU opens (lavapipe and torch each bring an LLVM)
CASES = int(os.environ.get("CONVROUTE_FUZZ", "280"))
SEED = int(os.environ.get("CONVROUTE_FUZZ_SEED") or random.SystemRandom().randrange(1 << 31))
PROGRESS_EVERY = 100
DTYPES = ("float32", "float16")
HAS_F16 = F16_FEATURE in get_gpu().profile.features
PER_DTYPE = -(-CASES // (2 if HAS_F16 else 1))
# autotune's choice is not under test here, its routing and its candidates' correctness are: one timed round
QUICK_TUNING = TimingSettings(warmup=1, repeats=1, min_repeats=1, budget_s=0.0)


def synthetic_calibration(gpu: Gpu, dtype: str) -> None:
    """A calibration profile with made-up times (per shape and algorithm a pseudo-random factor on a FLOP
    count), so that policy `calibrated` runs its model and picks every kind of algorithm somewhere, in
    milliseconds instead of the ~20 s a real quick calibration costs on lavapipe."""
    samples = []
    for p in tiny_grid() + full_grid()[::5]:
        times = {n: (0.5 + zlib.crc32(f"{n} {params_key(p)}".encode()) % 1000 / 500) * (1e-8 * p.flops + 0.01)
                 for n, cls in ALGORITHMS.items() if cls.unsupported(p) is None}
        samples.append(calib.Sample(p, times, {}))
    cal = calib.Calibration(gpu.profile.key, calib.device_record(gpu.profile), "synthetic", "none", samples,
                            dtype=dtype)
    assert calib.save_calibration(cal) is not None


def forget_tuned(gpu: Gpu, dtype: str) -> None:
    """Autotune rewrites its whole file per new shape: start it afresh now and then, or N cases cost N^2."""
    path = autotune_mod.AutotuneCache(gpu.profile.key, dtype).path
    autotune_mod.AutotuneCache._memory.pop(str(path), None)
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fuzz(dtype, monkeypatch, capsys):
    if dtype == "float16" and not HAS_F16:
        pytest.skip(f"the adapter ({get_gpu().profile.name}) lacks {F16_FEATURE}: float16 is not fuzzed here")
    gpu = get_gpu()
    # lavapipe compiles each direct register-tile pipeline at its first dispatch (the generic kernel once per tile,
    # the specialised one per kernel geometry for layers over 20 MFLOPs), 1.5-3 s for the large tiles: the fuzz
    # takes the smallest, test_direct covers the large ones
    monkeypatch.setattr(direct_cpu, "TILES", (direct_cpu.RegisterTile(4, 4),))
    synthetic_calibration(gpu, dtype)
    monkeypatch.setattr(autotune_mod, "SETTINGS", QUICK_TUNING)
    monkeypatch.setattr(refine_mod, "SETTINGS", QUICK_TUNING)  # calibrated times convs outside its calibration
    tally, start = Tally(), time.perf_counter()
    print(f"fuzz {dtype}: replay with CONVROUTE_FUZZ_SEED={SEED}")  # captured: in the report of a failure (xdist too)
    with capsys.disabled():
        print(f"\nfuzz {dtype}: {PER_DTYPE} cases on {gpu.profile.name}, seed {SEED} "
              f"(replay: CONVROUTE_FUZZ_SEED={SEED})")

    @seed(SEED + DTYPES.index(dtype))  # other shapes in each dtype
    @settings(max_examples=PER_DTYPE, deadline=None, database=None, print_blob=False, report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False))  # hypothesis makes every draw: reproducible and shrinkable
    def one_case(rng):
        case = draw_case(random_picker(rng), (dtype,))
        outcomes = check_case(case, gpu, policies=POLICIES)
        tally.add(outcomes)
        if tally.cases % PROGRESS_EVERY == 0:
            forget_tuned(gpu, dtype)
            with capsys.disabled():
                print(f"fuzz {dtype}: {tally.summary()} in {time.perf_counter() - start:.0f} s", flush=True)
        wrong = [o for o in outcomes if o.wrong]
        if wrong:
            pytest.fail(wrong[0].line(), pytrace=False)

    with single_threaded_torch():
        one_case()
    with capsys.disabled():
        print(f"fuzz {dtype}: {tally.summary()} in {time.perf_counter() - start:.0f} s; forced runs per algorithm: "
              + ", ".join(f"{n} {s.runs}" for n, s in sorted(tally.algorithms.items()))
              + "; policy runs: " + ", ".join(f"{n} {s.runs}" for n, s in sorted(tally.policies.items())))
    assert tally.cases >= PER_DTYPE
    assert set(tally.policies) == set(POLICIES)


# -- issue 9 -------------------------------------------------------------------------------------------------

ISSUE_9 = [  # x shape, w shape, stride, padding, dilation, groups, output_padding: wrong on the H100 at efb57e6
    ((1, 36, 11, 36), (36, 3, 1, 2), (3, 3), (3, 1), (1, 2), 2, (1, 1)),
    ((1, 68, 36, 21), (68, 15, 5, 3), (1, 3), (2, 1), (1, 2), 4, (0, 2)),
]


@pytest.mark.parametrize("algorithm", ["auto", "transposed"])
@pytest.mark.parametrize("shape", ISSUE_9, ids=["repro1", "repro2"])
def test_issue_9_transposed_repros_match_torch(shape, algorithm):
    x_shape, w_shape, stride, padding, dilation, groups, output_padding = shape
    p = make_params(x_shape, w_shape, stride, padding, dilation, groups, transposed=True,
                    output_padding=output_padding)
    case = Case(p, bias=True, activation=None, dtype="float32", seed=9)
    (outcome,) = check_case(case, get_gpu(), algorithms=[] if algorithm == "auto" else [algorithm],
                            policies=["seed"] if algorithm == "auto" else [])
    assert outcome.algorithm == "transposed"
    assert not outcome.wrong, outcome.line()


# -- signed remainders in the WGSL ---------------------------------------------------------------------------

def collect_wgsl(monkeypatch) -> dict[str, str]:
    """{WGSL: where from}: every shader the conv kernels generate (each algorithm, both dtypes, with and without
    an activation, in both GEMM styles -- a CPU's register tiles and a GPU's workgroup tiles with split K -- on
    shapes that take each code path: transposed, grouped, strided, dilated, 1x1, small and wide), and every
    WGSL string constant of kernels/ (templates and fragments of the model-op kernels, format fields left in)."""
    gpu = get_gpu()
    sources: dict[str, str] = {}

    def record(self, source, constants=None):  # nothing is compiled: only the text matters here
        sources.setdefault(source, "")

    def record_dispatch(self, source, buffers, threads, workgroup, constants=None):
        record(self, source)
        return Dispatch(None, None, (1, 1, 1))

    monkeypatch.setattr(Gpu, "pipeline", record)
    monkeypatch.setattr(Gpu, "dispatch", record_dispatch)
    shapes = [make_params((1, 4, 6, 7), (4, 2, 3, 2), (2, 3), (1, 1), (2, 1), 2, transposed=True,
                          output_padding=(1, 2)),
              make_params((1, 4, 4, 4), (4, 3, 2, 2), 2, transposed=True),  # transposed's exact-cover GEMM
              make_params((2, 8, 9, 9), (8, 8, 3, 3), 1, 1), make_params((1, 8, 9, 9), (8, 4, 3, 3), 2, 1, 2, 2),
              make_params((1, 8, 9, 9), (16, 1, 3, 3), 1, 1, groups=8), make_params((1, 8, 8, 8), (8, 8, 1, 1)),
              make_params((1, 8, 9, 9), (8, 8, 1, 1), 2, 1), make_params((1, 16, 40, 40), (32, 16, 3, 3), 1, 1)]
    rng = np.random.default_rng(0)
    dtypes = DTYPES if HAS_F16 else DTYPES[:1]
    for style, busy, flops in (("registers", "1", 0), ("registers", "1", 1 << 62), ("workgroup", "256", 0)):
        monkeypatch.setattr(direct_cpu, "SPECIALISE_FLOPS", flops)  # direct_cpu's specialised and generic kernels
        monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
        monkeypatch.setenv("CONVROUTE_BUSY_WORKGROUPS", busy)
        for p in shapes:
            w = rng.uniform(-1, 1, p.weight_shape).astype(np.float32)
            b = np.zeros(p.c_out, np.float32)
            for name, cls in ALGORITHMS.items():
                if cls.unsupported(p):
                    continue
                for dtype, act in itertools.product(dtypes, (None, "silu")):
                    before = set(sources)
                    kernel = cls(gpu, p, w, b, Epilogue.parse(act), dtype)
                    x, y = gpu.empty(4 * int(np.prod(p.input_shape))), gpu.empty(4 * int(np.prod(p.output_shape)))
                    kernel.bind(x, y, p.n)
                    for source in set(sources) - before:
                        sources[source] = f"{name} {dtype} {act} {style} on {p.describe()}"
    import convroute.kernels as kernels_pkg

    for module_path in sorted(os.listdir(os.path.dirname(kernels_pkg.__file__))):
        if not module_path.endswith(".py"):
            continue
        module = __import__(f"convroute.kernels.{module_path[:-3]}", fromlist=["_"])
        for attr, value in vars(module).items():
            if isinstance(value, str) and re.search(r"\b(?:let|var|fn)\s|%", value):
                sources.setdefault(value.replace("{{", "{").replace("}}", "}"), f"template {module_path}:{attr}")
    return sources


WGSL_COMMENT = re.compile(r"//[^\n]*")
DECLARATION = re.compile(r"\b(?:let|var|const)\s+(\w+)\s*(?::\s*([\w<>, ]+?))?\s*=\s*([^;]+);")
I32_TYPED = re.compile(r"^(?:i32|vec[234]<i32>|array<i32, *\d+>)$")


def signed_remainders(source: str) -> list[str]:
    """`%` expressions whose operand may be i32: a literal `i32(`, or a name declared i32 or computed from one
    (explicitly typed, or initialised from an expression holding i32( or an i32 name outside a u32(...)). An
    over-approximation: every hit must become u32 arithmetic."""
    text = WGSL_COMMENT.sub("", source)
    signed = set(re.findall(r"\b(?:var|let|const)(?:<[^>]*>)?\s+(\w+)\s*:\s*(?:i32|vec[234]<i32>|array<i32)", text))
    signed |= set(re.findall(r"\b(\w+)\s*:\s*i32\b", text))  # struct members and function parameters
    for name, typ, init in DECLARATION.findall(text):
        if typ and I32_TYPED.match(typ.strip()):
            signed.add(name)
        elif not typ and _has_signed(init, signed):
            signed.add(name)
    hits = []
    for line in text.splitlines():
        for match in re.finditer(r"%", line):
            left, right = line[:match.start()], line[match.end():]
            if _has_signed(_left_chain(left), signed) or _has_signed(_right_operand(right), signed):
                hits.append(line.strip())
                break
    return hits


def _has_signed(expr: str, signed: set[str]) -> bool:
    expr = re.sub(r"\b(?:u32|f32|f16|bool)\(", "(", _strip_unsigned_calls(expr))
    return "i32(" in expr or any(re.search(rf"(?<!\w){re.escape(n)}\b", expr) for n in signed)


def _strip_unsigned_calls(expr: str) -> str:
    """Drop the arguments of u32(...) / f32(...) conversions: whatever is inside, the result is unsigned."""
    out, i = [], 0
    while i < len(expr):
        m = re.compile(r"\b(?:u32|f32|f16)\(").search(expr, i)
        if not m:
            out.append(expr[i:])
            break
        out.append(expr[i:m.start()] + "u32(0u)")
        depth, j = 1, m.end()
        while j < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[j], 0)
            j += 1
        i = j
    return "".join(out)


def _left_chain(text: str) -> str:
    """The left operand of a `%`, with the operands of the `*` and `/` before it (same precedence, so
    `a * b % c` is `(a * b) % c`)."""
    chain = ""
    while True:
        operand = _left_operand(text)
        chain = operand + chain
        text = text[:len(text.rstrip()) - len(operand)].rstrip()
        if not operand or not text.endswith(("*", "/", "%")):
            return chain
        chain = text[-1] + chain
        text = text[:-1]


def _left_operand(text: str) -> str:
    """The operand just left of an operator: a parenthesised group with what calls it, or a name/index chain."""
    text = text.rstrip()
    if text.endswith(")"):
        depth, i = 0, len(text) - 1
        while i >= 0:
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                break
            i -= 1
        m = re.search(r"[\w.\[\]<>]*$", text[:i])
        return text[m.start() if m else i:]
    m = re.search(r"[\w.\[\]]+$", text)
    return m.group(0) if m else ""


def _right_operand(text: str) -> str:
    text = text.lstrip()
    m = re.match(r"[\w.<>]*\(", text)
    if m:
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        return text[:j]
    m = re.match(r"[\w.\[\]]+", text)
    return m.group(0) if m else ""


def test_scan_finds_signed_remainders():
    """The scanner itself: it must flag each way a signed % can be written, and pass unsigned ones."""
    bad = ["let a = i32(x) - 3; if (a % 2 != 0) {}", "let t = i32(oh) - i32(ph); let r = t % i32(P.sh);",
           "if (u % i32(s) == 0) {}", "var q: i32 = 0; let r = q % 4;", "let r = (i32(a) - b) % 4;",
           "struct S { hs: i32 }; let r = (s.hs) % 2;", "let a = i32(b); let c = a + 1; let d = c % 3u;",
           "let a = -i32(b); let d = 2u * a % 3;"]
    good = ["let a = t % P.owb;", "let th = thp - kh * P.dh; if (th % P.sh != 0u) {}",
            "let iw0 = i32(tw / P.sw) - i32(lift); let r = tw % P.sw;", "let x = u32(i32(a) + 1) % 4u;"]
    for source in bad:
        assert signed_remainders(source), source
    for source in good:
        assert not signed_remainders(source), source


def test_no_signed_remainder_in_any_kernel(monkeypatch):
    sources = collect_wgsl(monkeypatch)
    assert len(sources) > 30, "the WGSL collection missed kernels"
    assert {w.split()[0] for w in sources.values() if not w.startswith("template")} == set(ALGORITHMS)
    found = {where: hits for source, where in sources.items() if (hits := signed_remainders(source))}
    assert not found, ("signed % (undefined on Vulkan for negative operands; use u32 arithmetic): "
                       + "; ".join(f"{where}: {hits}" for where, hits in found.items()))
