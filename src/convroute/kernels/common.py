"""Pieces every kernel shares: the fused epilogue, uniform parameter blocks, flat invocation index."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float16")
F16_FEATURE = "shader-f16"
# Invocation index of a 1-D launch that Gpu.grid may have folded into two dimensions.
FLAT_INDEX = "(wid.x + wid.y * nwg.x) * WG + lid_x"
ENTRY_ARGS = ("@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, "
              "@builtin(local_invocation_index) lid_x: u32")


@dataclass(frozen=True)
class Activation:
    """One row of the activation table. `body`: WGSL returning the value for `v`, where `{param}` stands for
    a parameter's f32 literal and `NAME_helper(` calls one of `helpers` (HELPERS, named after the activation's
    function so two activations can share a shader); `reference`: float64 NumPy of (y, *params)."""

    body: str
    reference: Callable
    params: tuple[tuple[str, float], ...] = ()  # (name, default), in the order ("kind", *values) gives them
    helpers: tuple[str, ...] = ()


HELPERS = {
    "log1p": """fn NAME_log1p(x: f32) -> f32 {
  let u = 1.0 + x;
  return select(log(u) * (x / (u - 1.0)), x, u == 1.0);
}
""",
    "softplus": "fn NAME_softplus(x: f32) -> f32 { return max(x, 0.0) + NAME_log1p(exp(-abs(x))); }\n",
    "tanh": """fn NAME_tanh(v: f32) -> f32 {
  let e = exp(-2.0 * abs(v));
  let r = (1.0 - e) / (1.0 + e);
  return select(r, -r, v < 0.0);
}
""",
    "erf": """fn NAME_erf(x: f32) -> f32 {
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let p = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
  let y = 1.0 - p * exp(-a * a);
  return select(y, -y, x < 0.0);
}
""",
}


def _sigmoid(y):
    return 0.5 * (1.0 + np.tanh(0.5 * y))


def _softplus(y):
    return np.logaddexp(0.0, y)


TABLE = {
    "none": Activation("return v;", lambda y: y),
    "relu": Activation("return select(v, 0.0, v < 0.0);", lambda y: np.maximum(y, 0.0)),
    "relu6": Activation("return select(select(v, 0.0, v < 0.0), 6.0, v > 6.0);", lambda y: np.clip(y, 0.0, 6.0)),
    "clamp": Activation("return select(select(v, {lo}, v < {lo}), {hi}, v > {hi});", np.clip,
                        (("lo", -math.inf), ("hi", math.inf))),
    "hardswish": Activation("return v * select(select(v + 3.0, 0.0, v + 3.0 < 0.0), 6.0, v + 3.0 > 6.0) / 6.0;",
                            lambda y: y * np.clip(y + 3.0, 0.0, 6.0) / 6.0),
    "silu": Activation("return v / (1.0 + exp(-v));", lambda y: y * _sigmoid(y)),
    "sigmoid": Activation("return 1.0 / (1.0 + exp(-v));", _sigmoid),
    "hardsigmoid": Activation("return select(select((v + 3.0) / 6.0, 0.0, v + 3.0 < 0.0), 1.0, v + 3.0 > 6.0);",
                              lambda y: np.clip(y / 6.0 + 0.5, 0.0, 1.0)),
    "tanh": Activation("return NAME_tanh(v);", np.tanh, helpers=("tanh",)),
    "gelu": Activation("return 0.5 * v * (1.0 + NAME_erf(v * 0.7071067811865476));",
                       lambda y: 0.5 * y * (1.0 + np.vectorize(math.erf)(y / math.sqrt(2.0))), helpers=("erf",)),
    "gelu_tanh": Activation("return 0.5 * v * (1.0 + NAME_tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));",
                            lambda y: 0.5 * y * (1.0 + np.tanh(0.7978845608028654 * (y + 0.044715 * y ** 3))),
                            helpers=("tanh",)),
    "leaky_relu": Activation("return select(v, v * {negative_slope}, v < 0.0);",
                             lambda y, s: np.where(y < 0.0, y * s, y), (("negative_slope", 0.01),)),
    # torch's elu; celu(alpha) is elu(alpha, 1, 1/alpha), selu is elu with its two constants
    "elu": Activation("return {scale} * select(v, {alpha} * (exp(v * {input_scale}) - 1.0), v <= 0.0);",
                      lambda y, a, s, i: s * np.where(y <= 0.0, a * np.expm1(np.minimum(y, 0.0) * i), y),
                      (("alpha", 1.0), ("scale", 1.0), ("input_scale", 1.0))),
    "softplus": Activation("return select(NAME_softplus(v * {beta}) / {beta}, v, v * {beta} > {threshold});",
                           lambda y, b, t: np.where(y * b > t, y, _softplus(y * b) / b),
                           (("beta", 1.0), ("threshold", 20.0)), ("log1p", "softplus")),
    "mish": Activation("return v * NAME_tanh(NAME_softplus(v));", lambda y: y * np.tanh(_softplus(y)),
                       helpers=("log1p", "softplus", "tanh")),
    "logsigmoid": Activation("return min(v, 0.0) - NAME_log1p(exp(-abs(v)));", lambda y: -_softplus(-y),
                             helpers=("log1p",)),
}
ACTIVATIONS = tuple(TABLE)
SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)  # elu's alpha and scale


@dataclass(frozen=True)
class Epilogue:
    """Bias is added by every kernel; this is the activation applied after it (a row of TABLE): clamp's
    bounds in lo/hi, any other activation's parameters in `args` (every one, defaults filled in)."""

    kind: str = "none"
    lo: float = -math.inf
    hi: float = math.inf
    args: tuple[float, ...] = ()

    @classmethod
    def parse(cls, activation) -> Epilogue:
        """None, a name, an Epilogue, ("clamp", lo, hi), or (name, *parameters), e.g. ("leaky_relu", 0.2)."""
        if activation is None:
            return cls()
        if isinstance(activation, Epilogue):
            return activation
        if isinstance(activation, str):
            if activation not in ACTIVATIONS or activation == "clamp":
                raise ValueError(f"unknown activation {activation!r}; use one of "
                                 f"{', '.join(a for a in ACTIVATIONS if a != 'clamp')} or ('clamp', lo, hi)")
            return cls.of(activation)
        if isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clamp":
            lo, hi = float(activation[1]), float(activation[2])
            if lo > hi:
                raise ValueError(f"clamp activation needs lo <= hi, got ({lo}, {hi})")
            return cls("clamp", lo, hi)
        if isinstance(activation, tuple) and activation and activation[0] in ACTIVATIONS:
            return cls.of(activation[0], *activation[1:])
        raise ValueError(f"unknown activation {activation!r}")

    @classmethod
    def of(cls, kind: str, *values: float) -> Epilogue:
        """The activation `kind` with its first parameters `values` (the rest at their defaults)."""
        params = TABLE[kind].params
        if kind == "clamp" or len(values) > len(params):
            raise ValueError(f"activation {kind!r} takes {'lo and hi' if kind == 'clamp' else len(params)} "
                             f"parameter(s) ({', '.join(n for n, _ in params) or 'none'}), got {values}")
        args = tuple(float(v) for v in values) + tuple(d for _, d in params[len(values):])
        if not all(math.isfinite(a) for a in args):
            raise ValueError(f"activation {kind!r} needs finite parameters, got {args}")
        return cls(kind, args=args)

    @property
    def values(self) -> tuple[float, ...]:
        return (self.lo, self.hi) if self.kind == "clamp" else self.args

    @property
    def jumps(self) -> tuple[float, ...]:
        """The inputs where the activation is discontinuous: softplus turns linear past threshold / beta."""
        return (self.args[1] / self.args[0],) if self.kind == "softplus" else ()

    def wgsl(self, name: str = "act") -> str:
        """`fn act(v: f32) -> f32` (or another `name`); a NaN passes through as in PyTorch (see keep_nan)."""
        row = TABLE[self.kind]
        body = row.body.format(**{p: _f32(v) for (p, _), v in zip(row.params, self.values, strict=True)})
        helpers = "".join(HELPERS[h] for h in row.helpers)
        return (helpers + keep_nan(body, name)).replace("NAME_", f"{name}_")

    def reference(self, y: np.ndarray) -> np.ndarray:
        """The activation of `y` in float64 NumPy (the kernels' meaning; the self-test and CPU steps use it)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return TABLE[self.kind].reference(np.asarray(y, np.float64), *self.values)


# WGSL lets compilers assume no NaN, and NVIDIA's turns select(v, 0.0, v < 0.0) into a max that returns 0 for
# a NaN (relu(NaN) was 0 on the H100, NaN on lavapipe): activations test the bits instead.
NAN_BITS = "(bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u"


def keep_nan(body: str, name: str = "act") -> str:
    """`fn act(v: f32) -> f32` (or another `name`) running `body` (WGSL that returns a value) for every v but NaN,
    which it returns."""
    if body == "return v;":
        return f"fn {name}(v: f32) -> f32 {{ return v; }}\n"
    return (f"fn {name}_number(v: f32) -> f32 {{ {body} }}\n"
            f"fn {name}(v: f32) -> f32 {{ return select({name}_number(v), v, {NAN_BITS}); }}\n")


F32_MAX = "3.4028234663852886e38"  # the largest f32 exactly: Tint (browsers) refuses 3.4028235e38 as too large


def _f32(x: float) -> str:
    """A WGSL f32 literal of `x`; an infinite or out-of-range bound becomes the largest finite f32."""
    if abs(x) > float(F32_MAX):
        return F32_MAX if x > 0 else "-" + F32_MAX
    return f"{float(x)!r}"


def uniform_block(names: list[str]) -> str:
    """WGSL struct + binding for a block of u32 parameters, in the order `pack` writes them."""
    fields = "".join(f"  {n}: u32,\n" for n in names)
    return f"struct Params {{\n{fields}}}\n"


def storage(*buffers: str, first: int = 1) -> str:
    """WGSL declarations from binding `first`: 'y!' is written, 'scale:f32' reads array<f32>, 'wt:vec4<ST>'
    reads array<vec4<ST>> (the element type after the colon; ST when none, except a bare 'x': array<XT>, the
    input's element type, Precision.input)."""
    lines = []
    for i, spec in enumerate(buffers, start=first):
        name, _, elem = spec.partition(":")
        access = "read_write" if name.endswith("!") else "read"
        elem = elem or ("XT" if name == "x" else "ST")
        lines.append(f"@group(0) @binding({i}) var<storage, {access}> {name.rstrip('!')}: array<{elem}>;")
    return "\n".join(lines)


def storage_frame(header: str, params: list[str], buffers: str, helpers: str, wg: int) -> str:
    """The opening of a shader whose parameter block is a read-only storage buffer, copied to `p` once, up to
    the open body of `fn main`. Not a uniform buffer: lavapipe (Mesa 22.3) "inlines" uniform values that steer
    branches and loops by recompiling the shader at every dispatch whenever that halves it (a 1x1 conv to 8
    channels took 9.3 ms instead of 0.25 ms: M = 8 folds away half the stores)."""
    return f"""{header}
{uniform_block(params)}
@group(0) @binding(0) var<storage, read> P: Params;
{buffers}
{helpers}
@compute @workgroup_size({wg})
fn main({ENTRY_ARGS}) {{
  let p = P;"""


def split_index(index: str, digits: list[tuple[str, str]], last: str) -> str:
    """WGSL lets splitting the u32 `index` into mixed-radix digits, innermost first: each (name, radix) gets
    the remainder and the rest is divided on; `last` gets the final quotient."""
    lines, rest = [], index
    for i, (name, radix) in enumerate(digits):
        lines.append(f"  let {name} = {rest} % {radix};")
        lines.append(f"  {'var r =' if i == 0 else 'r ='} {rest} / {radix};")
        rest = "r"
    return "\n".join(lines + [f"  let {last} = {rest};"])


SPLIT_UNROLL = 8


def _tree_sum(terms: list[str]) -> str:
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2], strict=True)]
    return terms[0]


def sum_splits(total: str, base: str, stride: str, unroll: int = SPLIT_UNROLL) -> str:
    """WGSL adding `part[base + s * stride]` for s < P.splits into the variable `total`: `unroll` (a power of
    two) loads a trip summed as a tree, then the rest in halving blocks, so every load of a block is in flight
    at once. A reduce's loads are independent; in a plain loop each waited for the last (a 32-way split-K
    reduce took ~10 us on the H100, mostly serial L2 round trips)."""
    def block(width: int) -> str:
        return _tree_sum([f"part[o + {i}u * ss]" if i else "part[o]" for i in range(width)])
    lines = ["", "  {", f"    let sb = {base};", f"    let ss = {stride};", "    var s = 0u;",
             f"    for (; s + {unroll}u <= P.splits; s += {unroll}u) {{",
             f"      let o = sb + s * ss; {total} += {block(unroll)};", "    }"]
    width = unroll // 2
    while width >= 1:
        lines.append(f"    if (s + {width}u <= P.splits) {{ let o = sb + s * ss; {total} += {block(width)}; "
                     f"s += {width}u; }}")
        width //= 2
    lines.append("  }")
    return "\n".join(lines)


def constants(u32: dict | None = None, i32: dict | None = None) -> str:
    """WGSL `const` lines: NAME: u32 for `u32`'s items, NAME: i32 for `i32`'s."""
    lines = [f"const {name}: u32 = {int(v)}u;" for name, v in (u32 or {}).items()]
    lines += [f"const {name}: i32 = {int(v)};" for name, v in (i32 or {}).items()]
    return "\n".join(lines) + "\n"


def pack(names: list[str], values: dict) -> list[int]:
    """Values in struct order, padded to a multiple of 4 words (uniform buffers need 16-byte sizes)."""
    words = [int(values[n]) for n in names]
    words += [0] * (-len(words) % 4)
    return words


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# Four stored elements as one load unit, `ST4`, with ld4 converting it to f32; f16 quads are bound as vec2<u32>
# words and unpacked with unpack2x16float. Quads are stored as vec4<ST> through st4, a value conversion: WGSL
# defines it for NaN, Inf and values past f16's range (NaN stays NaN, overflow gives Inf), where pack2x16float's
# result is indeterminate.
VEC4_F32 = """alias ST4 = vec4<f32>;
fn ld4(w: ST4) -> vec4<f32> { return w; }
fn st4(v: vec4<f32>) -> vec4<ST> { return v; }
"""
VEC4_F16 = """alias ST4 = vec2<u32>;
fn ld4(w: ST4) -> vec4<f32> { return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
fn st4(v: vec4<f32>) -> vec4<ST> { return vec4<ST>(v); }
"""
# Four input elements (`XT4`, read through xld4): stored quads, or vec4<f32> where the input is float32.
X4_STORED = """alias XT4 = ST4;
fn xld4(w: XT4) -> vec4<f32> { return ld4(w); }
"""
X4_F32 = """alias XT4 = vec4<f32>;
fn xld4(w: XT4) -> vec4<f32> { return w; }
"""


@dataclass(frozen=True)
class Precision:
    """Element type of activations and weights in memory (`ST` in the WGSL) and of the running sums (`AT`).

    Kernels convert ST to f32 (or AT) on load and back on store; bias, split-K partial sums, Winograd
    products and the epilogue stay f32. float16 needs the adapter's shader-f16 feature.
    `input` "float32" with dtype "float16": the kernel's input `x` is a float32 buffer (`XT` in the WGSL, f32;
    otherwise ST): a program's float32 input read as uploaded, without a cast dispatch (ConvKernel's
    `input_dtype`).
    """

    dtype: str = "float32"
    accumulate: str = "float32"
    input: str = ""  # "float32": x holds f32 in a float16 kernel; "": x holds the storage type

    @classmethod
    def parse(cls, dtype="float32", accumulate=None, input=None) -> Precision:
        """`accumulate` None: the storage type's own (f16 sums for float16: at batch 1 f16 storage with f32
        sums ran 2-11 % slower than fp32 on the H100's GEMM paths, f16 sums 3-16 % faster, NOTES session 7).
        `input` None: the storage type."""
        dtype = "float32" if dtype is None else dtype_name(dtype, "dtype")
        accumulate = dtype if accumulate is None else dtype_name(accumulate, "accumulate")
        if accumulate == "float16" and dtype != "float16":
            raise ValueError(f"accumulate='float16' needs dtype='float16' (got dtype={dtype!r})")
        input = dtype if input is None else dtype_name(input, "input dtype")
        if input not in (dtype, "float32"):
            raise ValueError(f"an input of dtype {input!r} needs dtype={input!r} (got dtype={dtype!r}); only a "
                             f"float32 input may feed a float16 kernel")
        return cls(dtype, accumulate, "" if input == dtype else input)

    @property
    def numpy(self) -> type:
        return np.float16 if self.dtype == "float16" else np.float32

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "float16" else 4

    def wgsl(self) -> str:
        """The header every shader of a kernel starts with: `enable f16;` when needed and the type aliases."""
        st = "f16" if self.dtype == "float16" else "f32"
        at = "f16" if self.accumulate == "float16" else "f32"
        enable = "enable f16;\n" if "f16" in (st, at) else ""
        xt = "f32" if self.input == "float32" else "ST"
        return (f"{enable}alias ST = {st};\nalias AT = {at};\nalias XT = {xt};\n"
                + (VEC4_F16 if st == "f16" else VEC4_F32) + (X4_F32 if xt == "f32" else X4_STORED))

    def block_sums(self, open_block: str, close_block: str) -> dict:
        """Template values for a kernel whose f32 totals are `acc`: with f16 sums the inner loop adds to
        `part` (AT), which `open_block` declares zeroed and `close_block` adds to `acc` once per block (one
        input channel, kernel row or tap), so rounding grows with the block, not the whole reduction.
        With f32 sums the loop adds straight to `acc` and the blocks are empty."""
        if self.accumulate != "float16":
            return dict(sum="acc", open_block="", close_block="")
        return dict(sum="part", open_block=open_block, close_block=close_block)

    def require(self, profile) -> None:
        """ValueError when the device cannot run this precision."""
        if self.dtype == "float16" and F16_FEATURE not in profile.features:
            raise ValueError(f"dtype='float16' needs the adapter feature {F16_FEATURE!r}, which {profile.name!r} "
                             f"does not offer (it has: {', '.join(sorted(profile.features)) or 'none'}); "
                             f"use dtype='float32'")


FP32 = Precision()


def dtype_name(value, what: str = "dtype") -> str:
    """'float32'/'float16' from a name, a numpy dtype or type, or a torch dtype; ValueError otherwise."""
    name = value if isinstance(value, str) else str(value).removeprefix("torch.")
    if not isinstance(value, str):
        try:
            name = np.dtype(value).name
        except TypeError:
            pass
    name = {"half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(repr(d) for d in DTYPES)}")
    return name
