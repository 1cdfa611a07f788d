"""GEMM K splits (two dispatches: partial sums + reduce, or zero-fill + atomic adds) against one-launch forms
of the same GEMMs, in interleaved rounds in one process (tools/flag_ab.py's table). A split costs the host a
second dispatch's encoding (~7 us on the H100 machine's host), which the calibration's lone timing of a conv
does not see; this measures whether host-bound models gain from going without.

Arms, each the whole model compiled once (routing unchanged: only the launches of GEMMs that would split):
  splits  as shipped (gemm.launch_plan);
  sliced  each split GEMM as gemm.slice_plan would take it without its SLICE_MACS bound: one launch of 32x32
          tiles whose workgroups hold K slices of at least gemm.SLICE_STEPS K steps each, as many as fit the
          device (gemm_tiles: the slices' sums meet in workgroup memory); split still where none fit;
  whole   each split GEMM as one launch of its tile over all of K.

usage: python tools/split_ab.py [MODEL ...] [--size N] [--policy P] [--rounds R] [--dtype D]
       (default squeezenet1_1 mobilenet_v2, 224 px, seed, 100 rounds; on lavapipe set CONVROUTE_GEMM_STYLE=workgroup
       for GPUs' launch plans)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from unittest import mock

from flag_ab import compare  # tools/ is the script's directory
from maps_ab import add_model_arguments

from convroute.kernels import gemm


def one_launch(sliced: bool):
    """Gemm.plan without K splits: sliced (slice_plan for products of any size), or the planned tile over all
    of K."""
    planned = gemm.Gemm.plan

    def plan(self, cols: int):
        tile, splits = planned(self, cols)
        if splits == 1 or not sliced:
            return tile, 1
        with mock.patch.object(gemm, "SLICE_MACS", math.inf):
            return gemm.slice_plan(tile, splits, self.m, cols, self.k_pad, self.gpu.profile, self.precision)

    return lambda: mock.patch.object(gemm.Gemm, "plan", plan)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["squeezenet1_1", "mobilenet_v2"], rounds=100)
    args = parser.parse_args(argv)
    arms = {"splits": contextlib.nullcontext, "sliced": one_launch(True), "whole": one_launch(False)}
    return compare("GEMM K splits", arms, args)


if __name__ == "__main__":
    sys.exit(main())
