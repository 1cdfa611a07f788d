"""fp16's GEMM inner loop against fp32's, in interleaved rounds in one process (tools/flag_ab.py's table). On the
H100 (session 31, calls 47-48) fp16's GPU pass trails fp32's by 3-5 % on shufflenet_v2_x0_5 and hrnet_w18_small,
~10 % on each 3x3 implicit_gemm conv, and reading inputs two to a u32 word made it worse (session 32). Two costs
fp32 does not pay, patched into the generated GEMM source here (the kernel hash does not move):
- "A f16": the f16 weights reach the f16 registers through f32 (`vec4<AT>(ld4(...))`: unpack2x16float, then
  four conversions back); the arm binds them as vec4<f16> and loads them as they are (naga rejects bitcasts
  from u32 words to f16 vectors).
- "blocks N": the f16 sums are added to f32 totals once per K tile (gemm_tiles' `blocked`: four conversions and
  adds per accumulator per tile); the arm does it once per N K tiles (more products per f16 sum).

usage: python tools/f16_gemm_ab.py [MODEL ...] [--size N] [--policy P] [--rounds R]
       (arms: fp32, fp16 as shipped, fp16 A f16, fp16 blocks 2, fp16 both; default squeezenet1_1)
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from unittest import mock

from flag_ab import compare  # tools/ is the script's directory
from maps_ab import add_model_arguments

from convroute.kernels import gemm, gemm_tiles


def a_f16(source: str) -> str:
    if "alias ST = f16;" not in source or "alias AT = f16;" not in source:
        return source
    return source.replace("wa: array<ST4>;", "wa: array<vec4<f16>>;").replace("vec4<AT>(ld4(wa[", "vec4<AT>((wa[")


def blocks(n: int):
    def patch(source: str) -> str:
        source = re.sub(r"^    (acc\d+) = vec4<AT>\(0\.0\);$",
                        rf"    if ((kt - kt0) % {n}u == 0u) {{ \1 = vec4<AT>(0.0); }}", source, flags=re.M)
        return re.sub(r"^    (sum\d+ \+= vec4<f32>\(acc\d+\);)$",
                      rf"    if ((kt - kt0) % {n}u == {n - 1}u || !more) {{ \1 }}", source, flags=re.M)
    return patch


@contextlib.contextmanager
def patched(*edits):
    generate = gemm_tiles.generate

    def edited(*args, **kwargs):
        source = generate(*args, **kwargs)
        for edit in edits:
            source = edit(source)
        return source

    with mock.patch.object(gemm, "generate", edited):
        yield


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["squeezenet1_1"], rounds=100)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.blocks
    args.dtype = "dtype per arm"
    arms = {"fp32": (contextlib.nullcontext, "float32"),
            "fp16": (contextlib.nullcontext, "float16"),
            "A f16": (lambda: patched(a_f16), "float16"),
            f"blocks {n}": (lambda: patched(blocks(n)), "float16"),
            "both": (lambda: patched(a_f16, blocks(n)), "float16")}
    return compare("fp16's GEMM inner loop", arms, args)


if __name__ == "__main__":
    sys.exit(main())
