"""The contract every conv algorithm follows (ncnn's create-pipeline / forward split).

`__init__` prepacks the weights and compiles pipelines once; `bind(x, y, n)` builds the dispatches
for one pair of input/output buffers; running them is the only per-call work. `dtype` is the element type
of the input/output buffers and the prepacked weights ("float32", or "float16" on shader-f16 adapters);
`accumulate` the type of the running sums (by default the storage type; "float16" only with dtype "float16").
With `residual=True` (algorithms whose `fuses_residual` is set) the store adds a tensor of the output's shape
before the activation, y = act(conv + bias + residual), read from a buffer passed to `bind(..., residual=)`;
without it the WGSL is what it would be otherwise. `input_dtype="float32"` with dtype "float16" (algorithms whose
`reads_float32_input` is set): `x` is a float32 buffer, read and rounded to f16 on load, so a program's float32
input needs no cast dispatch before its first conv.
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import Epilogue, Precision, pack
from convroute.params import ConvParams

# Mesa's lavapipe (22.3) ends an invocation's loops silently after this many iterations in all: a kernel
# that would loop longer gives wrong sums there, so it is refused on CPU adapters instead.
CPU_LOOP_LIMIT = 65535


class ConvKernel:
    name = ""
    runs_transposed = False  # conv_transpose2d only, else conv2d only
    dense = ""  # why groups must be 1, for algorithms that need it ("is one dense GEMM")
    fuses_residual = False  # the store can add a residual tensor (see the module's text)
    reads_float32_input = False  # takes input_dtype="float32" in a float16 kernel (see the module's text)

    @classmethod
    def unsupported(cls, p: ConvParams) -> str | None:
        """None when this algorithm can run `p`, else the reason it cannot."""
        if p.transposed and not cls.runs_transposed:
            return f"it is a transposed convolution ({cls.name} runs only a forward conv2d; use 'transposed')"
        if cls.runs_transposed and not p.transposed:
            return "it is not a transposed convolution (use transposed=True)"
        if cls.dense and p.groups != 1:
            return f"groups={p.groups}: {cls.name} {cls.dense} and needs groups == 1"
        return cls.unsupported_shape(p)

    @classmethod
    def unsupported_shape(cls, p: ConvParams) -> str | None:
        """What `unsupported` adds to the checks of direction and groups."""
        return None

    @classmethod
    def unsupported_precision(cls, precision: Precision) -> str | None:
        """None when this algorithm has kernels for `precision`, else the reason it has not."""
        return None

    def __init__(self, gpu: Gpu, p: ConvParams, weight: np.ndarray, bias: np.ndarray | None,
                 epilogue: Epilogue, dtype="float32", accumulate=None, residual: bool = False, input_dtype=None):
        why = self.unsupported(p)
        if why:
            raise ValueError(f"algorithm {self.name!r} cannot run {p.describe()}: {why}")
        self.precision = Precision.parse(dtype, accumulate, input_dtype)
        if self.precision.input and not self.reads_float32_input:
            raise ValueError(f"algorithm {self.name!r} cannot read a float32 input in a {self.precision.dtype} "
                             f"kernel (input_dtype={input_dtype!r}); cast the input first")
        why = self.unsupported_precision(self.precision)
        if why:
            raise ValueError(f"algorithm {self.name!r} cannot run dtype={self.precision.dtype!r} "
                             f"accumulate={self.precision.accumulate!r}: {why}")
        self.precision.require(gpu.profile)
        if gpu.profile.family == "cpu" and self.loop_trips(p) > CPU_LOOP_LIMIT:
            raise ValueError(f"algorithm {self.name!r} cannot run {p.describe()} on {gpu.profile.name}: one invocation "
                             f"would loop {self.loop_trips(p)} times and lavapipe silently stops loops after "
                             f"{CPU_LOOP_LIMIT}; use a GEMM algorithm (im2col, implicit_gemm)")
        if residual and not self.fuses_residual:
            raise ValueError(f"algorithm {self.name!r} cannot add a residual in its store")
        self.dtype = self.precision.dtype
        self.gpu, self.p, self.epilogue, self.residual = gpu, p, epilogue, residual
        self.scratch = Scratch(gpu)
        bias = np.zeros(p.c_out, np.float32) if bias is None else np.asarray(bias, np.float32)
        self.prepare(np.asarray(weight, np.float32), bias)

    def upload(self, array: np.ndarray, what: str):
        """Weights in the storage dtype (bias and other f32 data go through gpu.upload)."""
        return self.gpu.upload(array, what, self.precision.numpy)

    @classmethod
    def loop_trips(cls, p: ConvParams) -> int:
        """Loop iterations of one invocation, summed over its nested loops (see CPU_LOOP_LIMIT)."""
        return 0

    def shape_values(self, **extra) -> dict:
        """The layer's shape as uniform values, named as the shaders' Params blocks name them."""
        p = self.p
        return dict(c_in=p.c_in, h=p.h, w=p.w, c_out=p.c_out, ho=p.ho, wo=p.wo, kh=p.kh, kw=p.kw,
                    sh=p.stride[0], sw=p.stride[1], ph=p.padding[0], pw=p.padding[1], dh=p.dilation[0],
                    dw=p.dilation[1], cin_g=p.c_in // p.groups, cout_g=p.c_out // p.groups) | extra

    def param_buffer(self, names: list[str], values: dict):
        """A parameter block as a read-only storage buffer (see common.storage_frame)."""
        return storage_params(self.gpu, names, values, f"{self.name} parameters")

    def prepare(self, weight: np.ndarray, bias: np.ndarray) -> None:
        raise NotImplementedError

    def bind(self, x, y, n: int, residual=None) -> list[Dispatch]:
        raise NotImplementedError

    def residual_buffers(self, residual) -> list:
        """[residual] for a kernel built with residual=True, [] otherwise; ValueError when bind's argument
        does not match how the kernel was built."""
        return residual_buffers(self.name, self.residual, residual)


def residual_buffers(who: str, built: bool, residual) -> list:
    """[residual] when `who` was built with a residual (`built`), [] otherwise; ValueError when the buffer given
    (or its absence) does not match how it was built."""
    if (residual is not None) != built:
        raise ValueError(f"{who} was built with residual={built} but got "
                         f"{'a' if residual is not None else 'no'} residual buffer")
    return [] if residual is None else [residual]


def storage_params(gpu: Gpu, names: list[str], values: dict, what: str):
    """`values` packed in the order of `names` into a read-only storage buffer (see common.storage_frame)."""
    return gpu.upload(np.asarray(pack(names, values), np.uint32), what, np.uint32)


class Scratch:
    """A prepared kernel's work buffers (column matrices, partial sums), one per purpose, kept at the largest
    size a bind has asked for: binds of any batch share them instead of allocating their own.

    Sharing is safe because a bind's dispatches write and read its scratch within one command buffer, and
    wgpu orders command buffers on the device's one queue with barriers, whichever thread submits them; a
    bind that grows a buffer leaves the smaller one to the earlier binds whose bind groups hold it."""

    def __init__(self, gpu: Gpu):
        self.gpu = gpu
        self._buffers: dict[str, object] = {}

    def get(self, nbytes: int, what: str):
        """A storage buffer of at least `nbytes` for `what`."""
        buffer = self._buffers.get(what)
        if buffer is None or buffer.size < nbytes:
            buffer = self._buffers[what] = self.gpu.empty(nbytes, what)
        return buffer


def pack_oc4(weight_oc_first: np.ndarray, groups: int, bias: np.ndarray):
    """[C_out, ...] -> [groups * ceil(C_out_g / 4), ..., 4]: output channels in fours, zero-padded per group.

    Returns (packed weight, packed bias [blocks, 4], blocks per group).
    """
    c_out = weight_oc_first.shape[0]
    cg = c_out // groups
    blocks = -(-cg // 4)
    rest = weight_oc_first.shape[1:]
    w = np.zeros((groups, blocks * 4) + rest, np.float32)
    w[:, :cg] = weight_oc_first.reshape((groups, cg) + rest)
    b = np.zeros((groups, blocks * 4), np.float32)
    b[:, :cg] = bias.reshape(groups, cg)
    w = w.reshape((groups * blocks, 4) + rest)
    w = np.moveaxis(w, 1, -1)  # the 4 channels of a block become the innermost (vec4) axis
    return np.ascontiguousarray(w), b.reshape(groups * blocks, 4), blocks
