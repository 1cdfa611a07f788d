"""PyTorch as a peer: a conv layer's chain (`bench --compare`), and whole models on the CPU, on CUDA (eager)
and on CUDA replaying a captured CUDA graph (`run --compare`). CUDA runs with TF32 off and cudnn.benchmark
on (see `peer_settings`); fp16 is `.half()` (channels-last on CUDA)."""

from __future__ import annotations

import contextlib
import copy
import math

from convroute.peers.base import LayerEngine, ModelEngine, Unavailable, shape_preserving

TIMED_RUNS = 5  # of the chain's GPU time (CUDA events)


def import_torch():
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed: pip install 'convroute[torch]'") from None
    return torch


@contextlib.contextmanager
def peer_settings():
    """fp32 without TF32, cudnn.benchmark on; the caller's settings come back afterwards (nothing without torch)."""
    try:
        backends = import_torch().backends
    except Unavailable:
        yield
        return
    saved = (backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = True, False, False
    try:
        yield
    finally:
        backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


def require_fp16_conv(torch, device: str) -> None:
    """Unavailable when this torch build has no fp16 conv on `device` (older CPU builds had none)."""
    x = torch.ones(1, 2, 4, 4, dtype=torch.float16, device=device)
    w = torch.ones(2, 2, 3, 3, dtype=torch.float16, device=device)
    try:
        torch.nn.functional.conv2d(x, w, padding=1)
        torch.nn.functional.conv_transpose2d(x, w, stride=2)
    except RuntimeError as err:
        raise Unavailable(f"torch {torch.__version__} has no float16 conv on {device} ({err})") from None


def describe(torch, device: str, precision: str) -> str:
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    extra = ", TF32 off, cudnn.benchmark" if device == "cuda" else ""
    return f"torch {torch.__version__} {device} ({where}) {precision}{extra}"


class TorchLayerEngine(LayerEngine):
    """A conv layer's chain on CUDA when there is a device, else on the CPU."""

    name = "torch"

    def __init__(self, precision: str = "fp32"):
        torch = self.torch = import_torch()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            self.name = "torch-fp16"
            require_fp16_conv(torch, self.device)
        self.detail = describe(torch, self.device, precision)

    def settings(self):
        return peer_settings()

    def prepare(self, p, x, weight, bias, chain):
        torch, dev = self.torch, self.device
        functional = torch.nn.functional
        w, b = torch.from_numpy(weight).to(dev, self.dtype), torch.from_numpy(bias).to(dev, self.dtype)
        x_host = torch.from_numpy(x).to(self.dtype)
        kwargs = {"stride": p.stride, "padding": p.padding, "dilation": p.dilation, "groups": p.groups}
        if p.transposed:
            conv = functional.conv_transpose2d
            kwargs["output_padding"] = p.output_padding
        else:
            conv = functional.conv2d
        preserving = shape_preserving(p)

        @torch.no_grad()
        def run_chain(x_dev):
            y = x_dev
            for _ in range(chain):
                y = conv(y if preserving else x_dev, w, b, **kwargs)
            return y

        def once():
            return run_chain(x_host.to(dev)).cpu().numpy()  # .cpu() waits for the stream

        gpu_ms = None
        if dev == "cuda":
            x_dev = x_host.to(dev)

            def gpu_ms():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                best = math.inf
                for _ in range(TIMED_RUNS):
                    start.record()
                    run_chain(x_dev)
                    end.record()
                    torch.cuda.synchronize()
                    best = min(best, start.elapsed_time(end))
                return best / chain

        return once, gpu_ms, lambda: None


class TorchModel(ModelEngine):
    """A whole model from a host input to a host output: on the CPU (no transfers), on CUDA eagerly (upload from
    pinned memory, forward, download), or on CUDA replaying the forward captured once in a CUDA graph (the
    lowest-overhead way to run a model from PyTorch without a compiler)."""

    def __init__(self, model, x, device: str, precision: str, graph: bool = False):
        torch = import_torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise Unavailable("no CUDA device (torch.cuda.is_available() is False)")
        self.precision = precision
        self.name = f"torch-{device}" + ("-graph" if graph else "")
        self.detail = describe(torch, device, precision) + (", CUDA graph replay" if graph else "")
        dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            require_fp16_conv(torch, device)
        layout = torch.channels_last if device == "cuda" and precision == "fp16" else torch.contiguous_format
        model = copy.deepcopy(model).eval().to(device, dtype).to(memory_format=layout)
        host = x.to(dtype).contiguous(memory_format=layout)
        if device == "cpu":
            self.once = torch.no_grad()(lambda: model(host))
            return
        host = host.pin_memory()
        if not graph:
            self.once = torch.no_grad()(lambda: to_host(model(host.to(device, non_blocking=True))))
            return
        static = host.to(device)
        with torch.no_grad():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # cudnn.benchmark picks its algorithms before the capture
                    model(static)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                out = model(static)
        torch.cuda.synchronize()

        @torch.no_grad()
        def once():
            static.copy_(host, non_blocking=True)
            self.graph.replay()
            return to_host(out)

        self.once = once

    def close(self) -> None:
        self.__dict__.pop("graph", None)


def to_host(out):
    """A model's output on the host (`.cpu()` waits for the stream); a segmentation model's dict, each value."""
    return {key: value.cpu() for key, value in out.items()} if isinstance(out, dict) else out.cpu()
