"""ncnn as a peer (pip `ncnn`): on Vulkan in fp32 ("vk32": fp16 storage and arithmetic off) or fp16 ("vk16":
ncnn's defaults), or on the CPU. A conv layer's chain is written as an ncnn .param/.bin directly; a whole
model is converted by pnnx (pip `pnnx`: TorchScript trace -> ncnn), once per model, size and batch, into
the cache directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from convroute.cache import cache_dir
from convroute.params import ConvParams
from convroute.peers.base import LayerEngine, ModelEngine, NotApplicable, Unavailable, shape_preserving

INSTALL = "pip install 'convroute[peers]'"


def import_ncnn(vulkan: bool):
    try:
        import ncnn
    except ImportError:
        raise Unavailable(f"ncnn is not installed: {INSTALL}") from None
    if vulkan and ncnn.get_gpu_count() < 1:
        raise Unavailable("ncnn finds no Vulkan device here")
    return ncnn


def make_net(ncnn, vulkan: bool, precision: str):
    """An ncnn Net set up for Vulkan or the CPU (all cores); fp32 turns ncnn's fp16 storage and arithmetic off."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = vulkan
    if not vulkan:
        net.opt.num_threads = os.cpu_count() or 1
    if precision == "fp32":
        net.opt.use_fp16_packed = False
        net.opt.use_fp16_storage = False
        net.opt.use_fp16_arithmetic = False
    return net


def describe(ncnn, vulkan: bool, precision: str) -> str:
    fp16 = ", fp16 storage and arithmetic" if precision == "fp16" else ", fp16 storage/arithmetic off"
    where = f"Vulkan on {ncnn.get_gpu_info(ncnn.get_default_gpu_index()).device_name()}" if vulkan else \
        f"CPU, {os.cpu_count()} threads"
    return f"ncnn {where}{fp16}"


class NcnnLayerEngine(LayerEngine):
    """A conv layer's chain on ncnn Vulkan (shape-preserving, non-transposed layers at batch 1)."""

    def __init__(self, precision: str):
        self.ncnn = import_ncnn(vulkan=True)
        self.precision = precision
        self.name = f"ncnn-vk{precision[2:]}"
        self.detail = describe(self.ncnn, True, precision)

    @staticmethod
    def unsupported(p: ConvParams) -> str | None:
        if p.transposed:
            return "transposed convs are not part of the peer method (Deconvolution layers)"
        if p.n != 1:
            return "ncnn has no batch dimension (batch 1 only)"
        if not shape_preserving(p):
            return "not shape-preserving (C_in == C_out, stride 1, same size): the peer method chains only those"
        return None

    def prepare(self, p, x, weight, bias, chain):
        why = self.unsupported(p)
        if why:
            raise NotApplicable(why)
        net = make_net(self.ncnn, True, self.precision)
        with tempfile.TemporaryDirectory() as folder:
            param, model = Path(folder, "chain.param"), Path(folder, "chain.bin")
            param.write_text(chain_param(p, chain))
            model.write_bytes(chain_weights(weight, bias, chain))
            if net.load_param(str(param)) != 0 or net.load_model(str(model)) != 0:
                raise RuntimeError("ncnn could not load the generated chain")
        mat = self.ncnn.Mat(np.ascontiguousarray(x[0])).clone()  # wrapping numpy gives an unaligned channel step

        def once():
            extractor = net.create_extractor()
            extractor.input("b0", mat)
            ret, out = extractor.extract(f"b{chain}")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            return np.array(out).reshape(p.output_shape)

        return once, None, net.clear


def chain_param(p: ConvParams, chain: int) -> str:
    """An ncnn .param text: an Input and `chain` Convolution (groups 1) or ConvolutionDepthWise layers."""
    size = p.c_out * (p.c_in // p.groups) * p.kh * p.kw
    kind = "Convolution" if p.groups == 1 else "ConvolutionDepthWise"
    group = "" if p.groups == 1 else f" 7={p.groups}"
    args = (f"0={p.c_out} 1={p.kw} 11={p.kh} 2={p.dilation[1]} 12={p.dilation[0]} 3={p.stride[1]} "
            f"13={p.stride[0]} 4={p.padding[1]} 14={p.padding[0]} 5=1 6={size}{group}")
    lines = ["7767517", f"{chain + 1} {chain + 1}", f"Input data 0 1 b0 0={p.w} 1={p.h} 2={p.c_in}"]
    lines += [f"{kind} c{i} 1 1 b{i} b{i + 1} {args}" for i in range(chain)]
    return "\n".join(lines) + "\n"


def chain_weights(weight: np.ndarray, bias: np.ndarray, chain: int) -> bytes:
    """The .bin: per layer a float32 weight blob (tag 0 = raw float32) and the bias."""
    one = np.zeros(1, np.uint32).tobytes() + weight.astype(np.float32).tobytes() + bias.astype(np.float32).tobytes()
    return one * chain


class NcnnModel(ModelEngine):
    """A whole model converted by pnnx, from a host image to a host output (ncnn has no batch dimension)."""

    def __init__(self, model, x, vulkan: bool, precision: str, key: str):
        ncnn = import_ncnn(vulkan)
        self.precision = precision
        self.name = f"ncnn-vk{precision[2:]}" if vulkan else "ncnn-cpu"
        self.detail = describe(ncnn, vulkan, precision) + ", converted by pnnx"
        if x.shape[0] != 1:
            raise Unavailable(f"ncnn has no batch dimension (batch 1 only, got {x.shape[0]})")
        param, weights = converted(model, x, key)
        self.net = make_net(ncnn, vulkan, precision)
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise Unavailable(f"ncnn could not load pnnx's conversion {param}")
        image = ncnn.Mat(np.ascontiguousarray(x[0].float().numpy())).clone()  # cloned: an aligned channel step

        def once():
            extractor = self.net.create_extractor()
            extractor.input("in0", image)
            ret, out = extractor.extract("out0")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            return np.array(out)

        self.once = once

    def close(self) -> None:
        self.net.clear()


def converted(model, x, key: str) -> tuple[Path, Path]:
    """(param, bin) of the model converted by pnnx for this input shape, from the cache or made now (float32
    weights: pnnx's default would round them to fp16)."""
    folder = cache_dir() / "ncnn"
    param, weights = folder / f"{key}.ncnn.param", folder / f"{key}.ncnn.bin"
    if param.exists() and weights.exists():
        return param, weights
    try:
        import pnnx
    except ImportError:
        raise Unavailable(f"pnnx is not installed (it converts the model for ncnn): {INSTALL}") from None
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
                torch.jit.trace(model.eval(), (x.float(),)).save(str(work / "model.pt"))
        except Exception as err:
            raise Unavailable(f"pnnx needs a TorchScript trace, which failed: {type(err).__name__}: {err}") from None
        outputs = {name: work / f"model.{name}" for name in ("ncnnparam", "ncnnbin", "ncnnpy", "pnnxparam",
                                                           "pnnxbin", "pnnxpy", "pnnxonnx")}
        shape = ",".join(map(str, x.shape))
        command = [pnnx.EXEC_PATH, str(work / "model.pt"), f"inputshape=[{shape}]f32", "device=cpu", "fp16=0",
                   *(f"{name}={path}" for name, path in outputs.items())]
        done = subprocess.run(command, capture_output=True, text=True, cwd=work)
        if done.returncode != 0 or not outputs["ncnnparam"].exists() or not outputs["ncnnbin"].exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"pnnx could not convert the model (exit {done.returncode}: {tail[0]})")
        for source, target in ((outputs["ncnnbin"], weights), (outputs["ncnnparam"], param)):
            part = target.with_name(target.name + ".part")
            shutil.copyfile(source, part)
            os.replace(part, target)  # the param last: its presence means both are whole
    return param, weights
