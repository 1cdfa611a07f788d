"""Peer engines: what a user would run instead of convroute, timed by convroute's comparisons. One module per
engine family (torch_engines, ncnn_engines); this registry names them. An engine that cannot run here raises
`Unavailable` with the reason, which the comparisons print instead of a time."""

from __future__ import annotations

from convroute.peers.base import (
    LayerEngine,
    ModelEngine,
    NotApplicable,
    Unavailable,
    shape_preserving,
    short_precision,
)
from convroute.peers.ncnn_engines import NcnnLayerEngine, NcnnModel
from convroute.peers.torch_engines import TorchLayerEngine, TorchModel, peer_settings

# whole models (`run --compare`): name -> builder(model, x, precision, key); key names pnnx's cached conversion
MODEL_ENGINES = {
    "ncnn-vk32": lambda model, x, precision, key: NcnnModel(model, x, True, "fp32", key),
    "ncnn-vk16": lambda model, x, precision, key: NcnnModel(model, x, True, "fp16", key),
    "ncnn-cpu": lambda model, x, precision, key: NcnnModel(model, x, False, precision, key),
    "torch-cpu": lambda model, x, precision, key: TorchModel(model, x, "cpu", precision),
    "torch-cuda": lambda model, x, precision, key: TorchModel(model, x, "cuda", precision),
    "torch-cuda-graph": lambda model, x, precision, key: TorchModel(model, x, "cuda", precision, graph=True),
}

# the Python modules each engine needs, by the extra that installs them
NEEDS = {name: {"peers": ("ncnn", "pnnx")} if name.startswith("ncnn") else {"torch": ("torch",)}
         for name in MODEL_ENGINES}

# conv layers (`bench --compare`); "ncnn" times ncnn-vk32 and ncnn-vk16
LAYER_ENGINES = ("torch", "ncnn")
LAYER_NEEDS = {"torch": {"torch": ("torch",)}, "ncnn": {"peers": ("ncnn",)}}


def model_engine(name: str, model, x, precision: str, key: str) -> ModelEngine:
    """The named whole-model engine, ready to run; raises Unavailable (why not) or ValueError (unknown name)."""
    if name not in MODEL_ENGINES:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(MODEL_ENGINES)}")
    return MODEL_ENGINES[name](model, x, precision, key)


def layer_engines(names, fp16: bool) -> dict[str, LayerEngine | str]:
    """label -> layer engine, or the reason it is unavailable; peers of the asked precision first."""
    ncnn = [("ncnn-vk32", lambda: NcnnLayerEngine("fp32")), ("ncnn-vk16", lambda: NcnnLayerEngine("fp16"))]
    builds = {"torch": [("torch-fp16", lambda: TorchLayerEngine("fp16"))] if fp16 else [("torch", TorchLayerEngine)],
              "ncnn": ncnn[::-1] if fp16 else ncnn}
    engines: dict[str, LayerEngine | str] = {}
    for name in names:
        if name not in builds:
            raise ValueError(f"unknown engine {name!r} for --compare; known: {', '.join(LAYER_ENGINES)}")
        for label, build in builds[name]:
            try:
                engines[label] = build()
            except Unavailable as err:
                engines[label] = str(err)
    return engines


__all__ = ["LAYER_ENGINES", "LAYER_NEEDS", "MODEL_ENGINES", "NEEDS", "LayerEngine", "ModelEngine", "NotApplicable",
           "Unavailable", "layer_engines", "model_engine", "peer_settings", "shape_preserving", "short_precision"]
