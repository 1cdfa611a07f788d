"""implicit_gemm's B gather as shipped (a loop over the four columns writing `v[q]`) against the same gather
unrolled with constant components and branch-free loads, in interleaved rounds in one process (tools/flag_ab.py's
table: dispatches, errors, whole call and GPU pass per arm). On the H100 (session 30, dtype_nodes.py) fp16's 3x3
implicit_gemm convs of squeezenet1_1 ran 0.0184 ms against fp32's 0.0162; a vector written through a variable
index is what once moved NVIDIA's accumulators to local memory (gemm_tiles.store_quads), and f16 vectors are
packed two to a register. The variants are patched in at compile time (the kernel hash does not move): "unrolled"
(lost on the H100 in session 31: 1-10 % GPU pass) and "packed f16" (f16 inputs read two to a u32 word, PACKED; lost in
session 32: 7-10 % GPU pass in fp16).

usage: python tools/gather_ab.py [MODEL ...] [--size N] [--policy P] [--rounds R] [--dtype D]
       (default squeezenet1_1 at 224 px, seed, 100 rounds; on lavapipe set CONVROUTE_GEMM_STYLE=workgroup)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from unittest import mock

from flag_ab import compare  # tools/ is the script's directory
from maps_ab import add_model_arguments

from convroute.kernels import implicit_gemm
from convroute.kernels.common import storage

LOAD_B_TAP = """fn load_b(k: u32) -> vec4<AT> {
  if (k >= KK) { return vec4<AT>(0.0); }
  let tap = k % KHW;
  let dh = i32((tap / KW) * DH);
  let dw = i32((tap % KW) * DW);
  let chan = (k / KHW) * u32(H * W);
"""  # the opening of load_b: tap k's offsets
UNROLLED = implicit_gemm.WINDOWS_DECL + """fn gather_b(q: u32, chan: u32, dh: i32, dw: i32) -> AT {
  let ih = b_ih[q] + dh;
  let iw = b_iw[q] + dw;
  let inside = b_ok[q] && ih >= 0 && ih < H && iw >= 0 && iw < W;
  let index = select(0u, b_img[q] + chan + u32(ih * W + iw), inside);
  return select(AT(0.0), AT(x[index]), inside);
}
""" + LOAD_B_TAP + """  return vec4<AT>(gather_b(0u, chan, dh, dw), gather_b(1u, chan, dh, dw),
                  gather_b(2u, chan, dh, dw), gather_b(3u, chan, dh, dw));
}
"""


# f16 inputs read as u32 words, two elements each: where a thread's four columns lie in one output row of a
# stride-1 conv, inside the image, their four inputs are consecutive and come from two words (three when the first is
# odd) instead of four 16-bit loads; elsewhere one element at a time through its word.
PACKED_SETUP = implicit_gemm.B_SETUP + """
  b_run = SW == 1u && b_ok[3] && b_img[3] == b_img[0] && b_ih[3] == b_ih[0];
"""
PACKED = implicit_gemm.WINDOWS_DECL + """var<private> b_run: bool;
fn x_half(i: u32) -> AT {
  return AT(unpack2x16float(x[i >> 1u])[i & 1u]);
}
""" + LOAD_B_TAP + """  let ih0 = b_ih[0] + dh;
  let iw0 = b_iw[0] + dw;
  if (b_run && ih0 >= 0 && ih0 < H && iw0 >= 0 && iw0 + 3 < W) {
    let a = b_img[0] + chan + u32(ih0 * W + iw0);
    let w0 = unpack2x16float(x[a >> 1u]);
    let w1 = unpack2x16float(x[(a >> 1u) + 1u]);
    if ((a & 1u) == 0u) { return vec4<AT>(vec4<f32>(w0, w1)); }
    let w2 = unpack2x16float(x[(a >> 1u) + 2u]);
    return vec4<AT>(vec4<f32>(w0.y, w1, w2.x));
  }
  var v = vec4<AT>(0.0);
  for (var q = 0u; q < 4u; q++) {
    let ih = b_ih[q] + dh;
    let iw = b_iw[q] + dw;
    if (b_ok[q] && ih >= 0 && ih < H && iw >= 0 && iw < W) {
      v[q] = x_half(b_img[q] + chan + u32(ih * W + iw));
    }
  }
  return v;
}
"""


@contextlib.contextmanager
def packed_f16():
    """implicit_gemm with PACKED where its input is f16 (a program's float32 input keeps the loop)."""
    prepare = implicit_gemm.ImplicitGemm.prepare

    def packed_prepare(self, weight, bias):
        if self.precision.dtype != "float16" or self.precision.input == "float32":
            return prepare(self, weight, bias)
        def words(*names, first=1):
            return storage("x:u32", first=first)

        with mock.patch.object(implicit_gemm, "B_DECL", PACKED), \
                mock.patch.object(implicit_gemm, "B_SETUP", PACKED_SETUP), \
                mock.patch.object(implicit_gemm, "storage", words):
            return prepare(self, weight, bias)

    with mock.patch.object(implicit_gemm.ImplicitGemm, "prepare", packed_prepare):
        yield


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["squeezenet1_1"], rounds=100)
    args = parser.parse_args(argv)
    arms = {"loop": contextlib.nullcontext,
            "unrolled": lambda: mock.patch.object(implicit_gemm, "B_DECL", UNROLLED),
            "packed f16": packed_f16}
    return compare("implicit_gemm's B gather", arms, args)


if __name__ == "__main__":
    sys.exit(main())
