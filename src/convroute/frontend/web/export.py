"""`export_web`: a model as a browser bundle (see bundle.py for the files); `export_program` does it for a
compiled Program, re-planned for the browser profile (plan.browser_profile) with the program's policy."""

from __future__ import annotations

from pathlib import Path

import torch

from convroute.frontend.web.bundle import write_bundle
from convroute.frontend.web.plan import DEFAULT_CANDIDATES, plan_for_browser

DTYPES = {"auto": ("float32", "float16"), "float32": ("float32",), "float16": ("float16",)}


def export_web(model, example_inputs, out, *, dtype: str = "auto", policy: str = "seed", family: str = "unknown",
               candidates: int | str = DEFAULT_CANDIDATES, exclude=(), name: str | None = None) -> dict:
    """Write `model` (planned for `example_inputs`' shape) to the directory `out` as a browser bundle; the
    manifest's dict. `dtype` "auto" exports a float32 and a float16 plan (the page runs float16 where the
    adapter has shader-f16), or just the one named. `candidates`: algorithms per conv the page times (1: the
    policy's route, fixed), or "all". `exclude`: algorithms left out (plan_for_browser)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    x = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    plans = [plan_for_browser(model, (x,), dtype=d, policy=policy, family=family, candidates=candidates,
                              exclude=exclude)
             for d in DTYPES[dtype]]
    output_shape = plans[0].plan.metas[plans[0].output_name].shape
    return write_bundle(plans, Path(out), name or type(model).__name__, tuple(x.shape), tuple(output_shape))


def export_program(program, out, **options) -> dict:
    """export_web for a compiled Program: its model at its last input shape, its policy (autotune becomes
    measurement in the page) and dtype unless `options` say otherwise."""
    meta = program.plan.metas[program.plan.graph.inputs[0]]
    x = torch.randn(tuple(meta.shape), dtype=meta.dtype)
    policy = program.policy if program.policy != "autotune" else "seed"
    options.setdefault("policy", policy)
    options.setdefault("dtype", program.dtype)
    return export_web(program.model, (x,), out, **options)
