"""The same-page comparison with ONNX Runtime Web: the model as ONNX (torch.onnx.export), the example input,
ONNX Runtime Web's WebGPU build vendored from an npm install (nothing is fetched when the page runs) and
bench.html, which times both engines on that input in interleaved rounds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from convroute.frontend.web.bundle import asset

ORT_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm",
             "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")


def ort_dist() -> Path:
    """onnxruntime-web's dist folder: $CONVROUTE_ORT_WEB, else ./node_modules/onnxruntime-web/dist."""
    where = Path(os.environ.get("CONVROUTE_ORT_WEB") or "node_modules/onnxruntime-web/dist")
    missing = [f for f in ORT_FILES if not (where / f).exists()]
    if missing:
        raise FileNotFoundError(f"onnxruntime-web not found at {where} (missing {', '.join(missing)}): run "
                                f"`npm install onnxruntime-web` and set CONVROUTE_ORT_WEB to its dist folder")
    return where


def write_compare(model, x, out) -> None:
    """Write model.onnx, input.bin (x as float32), ort/ (vendored) and bench.html into the bundle `out`."""
    import torch

    out = Path(out)
    dist = ort_dist()
    torch.onnx.export(model.eval(), (x,), str(out / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    (out / "input.bin").write_bytes(np.ascontiguousarray(x.numpy(), np.float32).tobytes())
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(dist / name, out / "ort" / name)
    (out / "bench.html").write_bytes(asset("bench.html"))
