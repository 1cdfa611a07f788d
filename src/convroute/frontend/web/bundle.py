"""Writing browser plans to a directory: `manifest.json` (schema SCHEMA, version VERSION), one plan per
family and dtype (`plan-<key>.json` and its weights `weights-<key>.bin`; the key is the dtype for the first
family's plans, `<family>-<dtype>` for the others'; each manifest entry names its family and dtype), the WGSL
sources (`shaders/<n>.wgsl`, shared by the plans), and the page assets (`convroute.js`, `index.html`).

A plan lists its buffers (size, role: input, output, activation, weight, uniform, scratch; weights as a byte
range of the weights file, uniform blocks inline as u32 words), its pipelines (a shader file and override
constants) and its steps in order; each dispatch is [pipeline, [buffer ids bound at 0, 1, ...], [x, y, z]
workgroups]. A routed conv step carries one dispatch list per candidate algorithm and the export's default.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from convroute.frontend.web.plan import BrowserPlan
from convroute.frontend.web.trace import TracedBuffer

SCHEMA = "convroute.web.plan"
VERSION = 2
ASSETS = ("convroute.js", "index.html")


class ShaderFiles:
    """WGSL sources written once each, shared by every plan of the bundle."""

    def __init__(self, out: Path):
        self.dir = out / "shaders"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, str] = {}

    def file(self, source: str) -> str:
        if source not in self.index:
            name = f"shaders/{len(self.index):03d}.wgsl"
            (self.dir.parent / name).write_text(source)
            self.index[source] = name
        return self.index[source]


def write_bundle(plans: list[BrowserPlan], out, model_name: str, example_shape, output_shape) -> dict:
    """Write `plans` (one per dtype) and the page assets to `out`; the manifest's dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shaders = ShaderFiles(out)
    entries = {}
    for bp in plans:
        doc, weights = plan_document(bp, shaders)
        key = bp.dtype if bp.family == plans[0].family else f"{bp.family}-{bp.dtype}"
        weights_name = f"weights-{key}.bin"
        (out / weights_name).write_bytes(weights)
        doc["weights"] = weights_name
        text = json.dumps(doc, separators=(",", ":"))
        plan_name = f"plan-{key}.json"
        (out / plan_name).write_text(text)
        digest = hashlib.sha256(text.encode() + weights).hexdigest()[:16]
        entries[key] = dict(plan=plan_name, hash=digest, dtype=bp.dtype, family=bp.family,
                            weight_bytes=len(weights), routed=len(bp.routed), policy=bp.policy)
    manifest = dict(schema=SCHEMA, version=VERSION, model=model_name, input_shape=list(example_shape),
                    output_shape=list(output_shape), plans=entries)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for name in ASSETS:
        (out / name).write_bytes(asset(name))
    return manifest


def asset(name: str) -> bytes:
    return resources.files("convroute.frontend.web").joinpath("assets", name).read_bytes()


def plan_document(bp: BrowserPlan, shaders: ShaderFiles) -> tuple[dict, bytes]:
    """The plan's JSON document (without its weights file name) and the weights' bytes."""
    plan = bp.plan
    ids: dict[int, int] = {}
    buffers: list[dict] = []
    weights = bytearray()
    blobs: dict[bytes, int] = {}  # identical weights are stored once
    values = {id(b) for b in plan.allocated}
    inp = plan.input_staging.get(bp.input_name) or plan.buffer(bp.input_name)
    outp = plan.buffer(bp.output_name)
    pipelines: dict[int, int] = {}
    pipeline_docs: list[dict] = []

    def buffer_id(b: TracedBuffer) -> int:
        if id(b) in ids:
            return ids[id(b)]
        doc = dict(size=b.size, role=_role(b, inp, outp, values))
        if b.kind == "uniform":
            doc["data"] = list(memoryview(b.data).cast("I"))
        elif b.data is not None:
            if b.data not in blobs:
                blobs[b.data] = len(weights)
                weights.extend(b.data)
                weights.extend(b"\0" * (-len(weights) % 16))
            doc["offset"], doc["bytes"] = blobs[b.data], len(b.data)
        ids[id(b)] = len(buffers)
        buffers.append(doc)
        return ids[id(b)]

    def pipeline_id(p) -> int:
        if id(p) not in pipelines:
            pipelines[id(p)] = len(pipeline_docs)
            pipeline_docs.append(dict(shader=shaders.file(p.source), constants=dict(p.constants)))
        return pipelines[id(p)]

    def dispatches(ds) -> list:
        return [[pipeline_id(d.bind_group.pipeline), [buffer_id(b) for b in d.bind_group.buffers], list(d.grid)]
                for d in ds]

    input_id, output_id = buffer_id(inp), buffer_id(outp)
    steps = []
    if bp.casts:
        steps.append(dict(name="input cast", op="cast", dispatches=dispatches(bp.casts)))
    for step in plan.gpu_steps:
        doc = dict(name=step.node.module or step.node.name, op=step.node.op)
        routed = bp.routed.get(step.node.name)
        if step.op.params is not None:
            doc["conv"] = step.op.params.describe()
        if routed is None:
            doc["dispatches"] = dispatches(step.dispatches)
            if step.op.decision is not None:
                doc["algorithm"] = step.op.decision.algorithm
        else:
            doc["default"] = routed.chosen
            doc["reason"] = routed.reason
            doc["candidates"] = {name: dispatches(ds) for name, ds in routed.candidates.items()}
        steps.append(doc)
    in_meta, out_meta = plan.metas[bp.input_name], plan.metas[bp.output_name]
    doc = dict(schema=SCHEMA, version=VERSION, dtype=bp.dtype, policy=bp.policy, family=bp.family,
               features=sorted(bp.gpu.profile.features),
               input=dict(buffer=input_id, shape=list(in_meta.shape), dtype="float32"),
               output=dict(buffer=output_id, shape=list(out_meta.shape), dtype=bp.dtype),
               buffers=buffers, pipelines=pipeline_docs, steps=steps)
    return doc, bytes(weights)


def _role(b: TracedBuffer, inp, outp, values: set) -> str:
    if b is inp:
        return "input"
    if b is outp:
        return "output"
    if b.kind == "uniform":
        return "uniform"
    if id(b) in values:
        return "activation"
    return "weight" if b.data is not None else "scratch"
