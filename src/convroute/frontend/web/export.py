"""`export_web`: a model as a browser bundle (see bundle.py for the files); `export_program` does it for a
compiled Program, re-planned for the browser profile (plan.browser_profile) with the program's policy."""

from __future__ import annotations

from pathlib import Path

import torch

from convroute.device.profile import FAMILIES
from convroute.frontend.web.bundle import write_bundle
from convroute.frontend.web.plan import DEFAULT_CANDIDATES, DEFAULT_WEIGHTS_BUDGET, plan_for_browser

DTYPES = {"auto": ("float32", "float16"), "float32": ("float32",), "float16": ("float16",)}
DEFAULT_FAMILIES = ("unknown", "cpu")  # a generic GPU, and software adapters (SwiftShader) with their own kernels


def export_web(model, example_inputs, out, *, dtype: str = "auto", policy: str = "seed",
               family: str | tuple = DEFAULT_FAMILIES, candidates: int | str = DEFAULT_CANDIDATES, exclude=(),
               weights_budget: float | None = DEFAULT_WEIGHTS_BUDGET, name: str | None = None) -> dict:
    """Write `model` (planned for `example_inputs`' shape) to the directory `out` as a browser bundle; the
    manifest's dict. One plan per family (a name, a comma-separated list or a tuple; the page runs the "cpu"
    plan on a software adapter, else the one for its GPU's family, else the first) and dtype: "auto" exports
    float32 and float16 (the page runs float16 where the adapter has shader-f16), or just the one named; beside
    other families "cpu" plans float32 only. `candidates`: algorithms per conv the page times (1: the policy's
    route, fixed), or "all"; `exclude` and `weights_budget`: see plan_for_browser."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    families = tuple(f.strip().lower() for f in (family.split(",") if isinstance(family, str) else family))
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        raise ValueError(f"unknown device family {', '.join(unknown) or '(none)'}; known: {', '.join(FAMILIES)}")
    x = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    plans = [plan_for_browser(model, (x,), dtype=d, policy=policy, family=f, candidates=candidates,
                              exclude=exclude, weights_budget=weights_budget)
             for f in dict.fromkeys(families) for d in _dtypes(f, dtype, len(families))]
    output_shape = plans[0].plan.metas[plans[0].output_name].shape
    return write_bundle(plans, Path(out), name or type(model).__name__, tuple(x.shape), tuple(output_shape))


def _dtypes(family: str, dtype: str, families: int) -> tuple:
    """A software adapter beside GPU plans gets float32 only: none offers shader-f16 (SwiftShader does not)."""
    if family == "cpu" and families > 1:
        return tuple(d for d in DTYPES[dtype] if d == "float32")
    return DTYPES[dtype]


def export_program(program, out, **options) -> dict:
    """export_web for a compiled Program: its model at its last input shape, its policy (autotune becomes
    measurement in the page) and dtype unless `options` say otherwise."""
    meta = program.plan.metas[program.plan.graph.inputs[0]]
    x = torch.randn(tuple(meta.shape), dtype=meta.dtype)
    policy = program.policy if program.policy != "autotune" else "seed"
    options.setdefault("policy", policy)
    options.setdefault("dtype", program.dtype)
    return export_web(program.model, (x,), out, **options)
