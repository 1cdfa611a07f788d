"""`im2col`: gather the input windows into a column matrix, then the tiled GEMM with the prepacked weights.

The column matrix is [K_pad, S]: row k = (c, kh, kw) of the window, column j = one output pixel of the batch;
rows past K are zeros. Each gather invocation writes one vec4 (four neighbouring columns of one row).
When the matrix for the whole batch would exceed one storage binding, the output pixels are processed in
chunks: per chunk one gather dispatch and one GEMM dispatch that writes its slice of the output.
CPU adapters write and read the column matrix as a texture where it fits (im2col_tex, gemm_tex), else as a
buffer for gemm_cpu's register tiles.
"""

from __future__ import annotations

from convroute.kernels import gemm, gemm_cpu, im2col_tex
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import Precision, ceil_div, storage
from convroute.kernels.flat import flat_shader, launch

COL_BYTES_CAP = 256 << 20  # the column buffer stays below this even where bindings are larger
# Column j of a chunk is output pixel gj = col0 + j of the batch: image gj / pp, pixel gj % pp, zero past the
# image's p pixels. GPUs pack the images' columns back to back (pp = p); CPU adapters' register tiles read image
# b's columns from vec4 b * pp/4, so there each image's columns are padded to pp, a multiple of 4.
GATHER_PARAMS = ["c_in", "h", "w", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "k", "s4", "cols",
                 "col0", "p", "pp", "total"]

GATHER = """
  let j4 = t % P.s4;
  let k = t / P.s4;
  var v = vec4<f32>(0.0);
  if (k < P.k) {
    let kw = k % P.kw;
    let kh = (k / P.kw) % P.kh;
    let c = k / (P.kw * P.kh);
    for (var q = 0u; q < 4u; q++) {
      let j = j4 * 4u + q;
      let gj = P.col0 + j;
      let pix = gj % P.pp;
      if (j >= P.cols || pix >= P.p) { break; }
      let ih = i32((pix / P.wo) * P.sh + kh * P.dh) - i32(P.ph);
      let iw = i32((pix % P.wo) * P.sw + kw * P.dw) - i32(P.pw);
      if (ih >= 0 && ih < i32(P.h) && iw >= 0 && iw < i32(P.w)) {
        v[q] = f32(x[((gj / P.pp) * P.c_in + c) * P.h * P.w + u32(ih) * P.w + u32(iw)]);
      }
    }
  }
  col[t] = vec4<ST>(v);"""

B_DECL = "@group(0) @binding(4) var<storage, read> col: array<vec4<ST>>;"
B_SETUP = "let bq = bcol / 4u;"
B_LOAD = "col[k * P.s4 + bq]"


def column_chunk(profile, precision: Precision, k_pad: int, total: int, p=None) -> int:
    """Output pixels per chunk of `total` on `profile`: the most whole GEMM tiles whose column matrix of `k_pad`
    rows fits one binding (a pure function: the cost model reads it too). `p` names the conv in the error."""
    budget = min(profile.max_binding_bytes, COL_BYTES_CAP)
    fit = budget // (precision.itemsize * k_pad) // gemm.TILE * gemm.TILE
    if fit == 0:  # the weight matrix alone is larger than this, so only with an unusually small cap
        raise ValueError(f"im2col{'' if p is None else ' of ' + p.describe()}: {gemm.TILE} columns of {k_pad} "
                         f"rows exceed the {budget}-byte column buffer; use the direct algorithm")
    return min(fit, total)


class Im2col(ConvKernel):
    name = "im2col"
    fuses_residual = True
    reads_float32_input = True
    dense = "builds one dense column matrix"

    def prepare(self, weight, bias):
        p = self.p  # CPU adapters: gemm_cpu's register tiles read the column matrix as vec4 columns
        self.k = p.c_in * p.kh * p.kw
        self.k_pad = gemm.padded_k(self.k)
        self.cpu = gemm_cpu.for_conv(self, weight, bias, gemm_cpu.VecColumns.trips(self.k))
        self._weights, self._gemm = (weight, bias), None
        if not self.cpu:
            _ = self.gemm
        self.gather_source = flat_shader(GATHER_PARAMS, storage("x", "col!:vec4<ST>"), GATHER,
                                         precision=self.precision)
        self.gpu.pipeline(self.gather_source)
        self.tex = im2col_tex.ColumnTextures(self, weight, bias, repack=True) \
            if self.cpu and im2col_tex.ColumnTextures.wanted(self) else None

    @property
    def gemm(self) -> gemm.Gemm:
        """The workgroup GEMM: GPUs' path; on CPU adapters built only for batches whose column matrix needs
        chunks (the register tiles read one matrix)."""
        if self._gemm is None:
            self._gemm = gemm.Gemm(self.gpu, *self._weights, self.epilogue, B_DECL, B_SETUP, B_LOAD, ["s4"],
                                   self.precision, residual=self.residual)
        return self._gemm

    def chunk_columns(self, total: int) -> int:
        """Output pixels per chunk: the most whole GEMM tiles whose column matrix fits one binding."""
        return column_chunk(self.gpu.profile, self.precision, self.k_pad, total, self.p)

    def bind(self, x, y, n, residual=None):
        self.residual_buffers(residual)
        p = self.p
        pixels = p.ho * p.wo
        total = n * pixels
        padded = n * ceil_div(pixels, 4) * 4
        if self.tex and self.tex.fits(n):
            return self.tex.bind(x, y, n, residual)
        if self.cpu and self.chunk_columns(padded) == padded:  # one matrix, image b's columns from vec4 b * pp/4
            s4 = padded // 4
            col = self.scratch.get(4 * self.precision.itemsize * s4 * self.k_pad, "im2col column matrix")
            gather = self.shape_values(k=self.k, s4=s4, cols=padded, col0=0, p=pixels, pp=padded // n,
                                       total=self.k_pad * s4)
            return [launch(self.gpu, self.gather_source, GATHER_PARAMS, gather, [x, col]),
                    self.cpu.dispatch(y, col, n, pixels, s4, s4 // n, residual=residual)]
        chunk = self.chunk_columns(total)
        s4 = ceil_div(chunk, 4)
        col = self.scratch.get(4 * self.precision.itemsize * s4 * self.k_pad, "im2col column matrix")
        dispatches = []
        for col0 in range(0, total, chunk):
            cols = min(chunk, total - col0)
            gather = self.shape_values(k=self.k, s4=s4, cols=cols, col0=col0, p=pixels, pp=pixels,
                                       total=self.k_pad * s4)
            dispatches.append(launch(self.gpu, self.gather_source, GATHER_PARAMS, gather, [x, col]))
            dispatches += self.gemm.dispatches(y, [col], cols, col0, pixels, {"s4": s4}, residual)
        return dispatches
