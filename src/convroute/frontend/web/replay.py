"""A browser bundle's plan run natively through wgpu, as convroute.js runs it in a page: the same buffers,
WGSL, weights, uniform blocks and dispatches. It checks bundles on adapters no browser here offers: the float16
plan on lavapipe (which has shader-f16; Chromium's SwiftShader has not) and browser plans on a real GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from convroute.device.gpu import STORAGE, Dispatch, Gpu, get_gpu
from convroute.frontend.web.bundle import SCHEMA, VERSION


def replay(directory, x: np.ndarray, *, plan: str = "float32", route: dict | None = None,
           gpu: Gpu | None = None) -> np.ndarray:
    """The output of the bundle's plan `plan` (a key of its manifest's plans) on input `x` (float32, the plan's
    input shape), as float32. `route`: {conv layer: algorithm} for routed convs (else each one's default)."""
    directory = Path(directory)
    doc = plan_document(directory, plan)
    gpu = gpu or get_gpu()
    missing = set(doc["features"]) - set(gpu.device.features)
    if missing:
        raise ValueError(f"plan {plan!r} needs {', '.join(sorted(missing))}, which {gpu.profile.name} lacks")
    shape = tuple(doc["input"]["shape"])
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape != shape:
        raise ValueError(f"plan {plan!r} takes input of shape {shape}, got {x.shape}")
    buffers = _buffers(gpu, doc, (directory / doc["weights"]).read_bytes())
    pipelines = [gpu.pipeline((directory / p["shader"]).read_text(), p["constants"] or None)
                 for p in doc["pipelines"]]
    dispatches = [Dispatch(pipelines[pipe], gpu.bind(pipelines[pipe], [buffers[b] for b in bound]), tuple(grid))
                  for step in doc["steps"] for pipe, bound, grid in _step_dispatches(step, route or {})]
    gpu.write(buffers[doc["input"]["buffer"]], x)
    out = doc["output"]
    dtype = np.float16 if out["dtype"] == "float16" else np.float32
    y = gpu.run_and_read(dispatches, buffers[out["buffer"]], tuple(out["shape"]), dtype)
    return y.astype(np.float32)


def plan_document(directory, plan: str) -> dict:
    """The JSON document of the bundle's plan `plan` (a key of its manifest's plans)."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    if (manifest.get("schema"), manifest.get("version")) != (SCHEMA, VERSION):
        raise ValueError(f"{directory} is not a {SCHEMA} v{VERSION} bundle")
    if plan not in manifest["plans"]:
        raise ValueError(f"{directory} has no plan {plan!r} (it has {', '.join(manifest['plans'])})")
    return json.loads((directory / manifest["plans"][plan]["plan"]).read_text())


def candidate_routes(directory, plan: str) -> list[dict]:
    """Routes ({conv layer: algorithm}) that between them run every candidate of every routed conv of the plan:
    route k takes each conv's k-th candidate, or its last where it has fewer. One route for an unrouted plan."""
    routed = {s["name"]: list(s["candidates"]) for s in plan_document(directory, plan)["steps"] if "candidates" in s}
    most = max((len(names) for names in routed.values()), default=1)
    return [{layer: names[min(k, len(names) - 1)] for layer, names in routed.items()} for k in range(most)]


def _buffers(gpu: Gpu, doc: dict, weights: bytes) -> list:
    out = []
    for b in doc["buffers"]:
        if b["role"] == "uniform":
            out.append(gpu.uniform(b["data"]))
            continue
        buf = gpu.buffer(b["size"], STORAGE, b["role"])
        if "bytes" in b:
            gpu.device.queue.write_buffer(buf, 0, weights[b["offset"]:b["offset"] + b["bytes"]])
        out.append(buf)
    return out


def _step_dispatches(step: dict, route: dict) -> list:
    if "candidates" not in step:
        return step["dispatches"]
    chosen = route.get(step["name"], step["default"])
    if chosen not in step["candidates"]:
        raise ValueError(f"conv {step['name']} has no candidate {chosen!r} (it has {', '.join(step['candidates'])})")
    return step["candidates"][chosen]
