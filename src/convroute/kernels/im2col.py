"""`im2col`: gather the input windows into a column matrix, then the tiled GEMM with the prepacked weights.

The column matrix is [K_pad, S]: row k = (c, kh, kw) of the window, column j = one output pixel of the batch;
rows past K are zeros. Each gather invocation writes one vec4 (four neighbouring columns of one row).
When the matrix for the whole batch would exceed one storage binding, the output pixels are processed in
chunks: per chunk one gather dispatch and one GEMM dispatch that writes its slice of the output.
"""

from __future__ import annotations

from convroute.kernels import gemm
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import ENTRY_ARGS, FLAT_INDEX, ceil_div, pack, uniform_block

WG = 64
COL_BYTES_CAP = 256 << 20  # the column buffer stays below this even where bindings are larger
GATHER_PARAMS = ["c_in", "h", "w", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "k", "s4", "cols",
                 "col0", "p", "total"]

GATHER = """
const WG: u32 = {wg}u;
{params}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<ST>;
@group(0) @binding(2) var<storage, read_write> col: array<vec4<ST>>;

@compute @workgroup_size({wg})
fn main({args}) {{
  let t = {flat};
  if (t >= P.total) {{ return; }}
  let j4 = t % P.s4;
  let k = t / P.s4;
  var v = vec4<f32>(0.0);
  if (k < P.k) {{
    let kw = k % P.kw;
    let kh = (k / P.kw) % P.kh;
    let c = k / (P.kw * P.kh);
    for (var q = 0u; q < 4u; q++) {{
      let j = j4 * 4u + q;
      if (j >= P.cols) {{ break; }}
      let gj = P.col0 + j;
      let pix = gj % P.p;
      let ih = i32((pix / P.wo) * P.sh + kh * P.dh) - i32(P.ph);
      let iw = i32((pix % P.wo) * P.sw + kw * P.dw) - i32(P.pw);
      if (ih >= 0 && ih < i32(P.h) && iw >= 0 && iw < i32(P.w)) {{
        v[q] = f32(x[((gj / P.p) * P.c_in + c) * P.h * P.w + u32(ih) * P.w + u32(iw)]);
      }}
    }}
  }}
  col[t] = vec4<ST>(v);
}}
"""

B_DECL = "@group(0) @binding(4) var<storage, read> col: array<vec4<ST>>;"
B_SETUP = "let bq = bcol / 4u;"
B_LOAD = "col[k * P.s4 + bq]"


class Im2col(ConvKernel):
    name = "im2col"

    @classmethod
    def unsupported(cls, p):
        if p.transposed:
            return "it is a transposed convolution (im2col runs only a forward conv2d; use 'transposed')"
        if p.groups != 1:
            return f"groups={p.groups}: im2col builds one dense column matrix and needs groups == 1"
        return None

    def prepare(self, weight, bias):
        self.gemm = gemm.Gemm(self.gpu, weight, bias, self.epilogue, B_DECL, B_SETUP, B_LOAD, ["s4"],
                              self.precision)
        self.k, self.k_pad = self.gemm.k, self.gemm.k_pad
        self.gather_source = self.precision.wgsl() + GATHER.format(
            wg=WG, params=uniform_block(GATHER_PARAMS), args=ENTRY_ARGS, flat=FLAT_INDEX)
        self.gpu.pipeline(self.gather_source)

    def chunk_columns(self, total: int) -> int:
        """Output pixels per chunk: the most whole GEMM tiles whose column matrix fits one binding."""
        budget = min(self.gpu.profile.max_binding_bytes, COL_BYTES_CAP)
        fit = budget // (self.precision.itemsize * self.k_pad) // gemm.TILE * gemm.TILE
        if fit == 0:  # the weight matrix alone is larger than this, so only with an unusually small cap
            raise ValueError(f"im2col of {self.p.describe()}: {gemm.TILE} columns of {self.k_pad} rows exceed "
                             f"the {budget}-byte column buffer; use the direct algorithm")
        return min(fit, total)

    def bind(self, x, y, n):
        p = self.p
        pixels = p.ho * p.wo
        total = n * pixels
        chunk = self.chunk_columns(total)
        s4 = ceil_div(chunk, 4)
        col = self.scratch.get(4 * self.precision.itemsize * s4 * self.k_pad, "im2col column matrix")
        dispatches = []
        for col0 in range(0, total, chunk):
            cols = min(chunk, total - col0)
            gather = dict(c_in=p.c_in, h=p.h, w=p.w, wo=p.wo, kh=p.kh, kw=p.kw, sh=p.stride[0], sw=p.stride[1],
                          ph=p.padding[0], pw=p.padding[1], dh=p.dilation[0], dw=p.dilation[1], k=self.k, s4=s4,
                          cols=cols, col0=col0, p=pixels, total=self.k_pad * s4)
            u = self.gpu.uniform(pack(GATHER_PARAMS, gather))
            dispatches.append(self.gpu.dispatch(self.gather_source, [u, x, col], gather["total"], WG))
            dispatches += self.gemm.dispatches(y, [col], cols, col0, pixels, {"s4": s4})
        return dispatches
