"""implicit_gemm's B gather as shipped (a loop over the four columns writing `v[q]`) against the same gather
unrolled with constant components and branch-free loads, in interleaved rounds in one process (tools/flag_ab.py's
table: dispatches, errors, whole call and GPU pass per arm). On the H100 (session 30, dtype_nodes.py) fp16's 3x3
implicit_gemm convs of squeezenet1_1 ran 0.0184 ms against fp32's 0.0162; a vector written through a variable
index is what once moved NVIDIA's accumulators to local memory (gemm_tiles.store_quads), and f16 vectors are
packed two to a register. The variant is patched in at compile time (the kernel hash does not move).

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

UNROLLED = implicit_gemm.WINDOWS_DECL + """fn gather_b(q: u32, chan: u32, dh: i32, dw: i32) -> AT {
  let ih = b_ih[q] + dh;
  let iw = b_iw[q] + dw;
  let inside = b_ok[q] && ih >= 0 && ih < H && iw >= 0 && iw < W;
  let index = select(0u, b_img[q] + chan + u32(ih * W + iw), inside);
  return select(AT(0.0), AT(x[index]), inside);
}
fn load_b(k: u32) -> vec4<AT> {
  if (k >= KK) { return vec4<AT>(0.0); }
  let tap = k % KHW;
  let dh = i32((tap / KW) * DH);
  let dw = i32((tap % KW) * DW);
  let chan = (k / KHW) * u32(H * W);
  return vec4<AT>(gather_b(0u, chan, dh, dw), gather_b(1u, chan, dh, dw), gather_b(2u, chan, dh, dw),
                  gather_b(3u, chan, dh, dw));
}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["squeezenet1_1"], rounds=100)
    args = parser.parse_args(argv)
    arms = {"loop": contextlib.nullcontext,
            "unrolled": lambda: mock.patch.object(implicit_gemm, "B_DECL", UNROLLED)}
    return compare("implicit_gemm's B gather", arms, args)


if __name__ == "__main__":
    sys.exit(main())
