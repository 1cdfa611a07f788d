"""GEMM K splits (two dispatches: partial sums + reduce, or zero-fill + atomic adds) against one-launch forms
of the same GEMMs, in interleaved rounds in one process (tools/flag_ab.py's table). A split costs the host a
second dispatch's encoding (~7 us on the H100 machine's host), which the calibration's lone timing of a conv
does not see; this measures whether host-bound models gain from going without.

Arms, each the whole model compiled once (routing unchanged: only the launches of GEMMs that would split):
  splits  as shipped (gemm.launch_plan);
  sliced  each split GEMM as one launch of 32x32 tiles whose workgroups hold K slices of at least
          gemm.SLICE_STEPS K steps each, as many as fit the device (gemm_tiles: the slices' sums meet in
          workgroup memory);
  whole   each split GEMM as one launch of its tile over all of K.

usage: python tools/split_ab.py [MODEL ...] [--size N] [--policy P] [--rounds R] [--dtype D]
       (default squeezenet1_1 mobilenet_v2, 224 px, seed, 100 rounds; on lavapipe set CONVROUTE_GEMM_STYLE=workgroup
       for GPUs' launch plans)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from unittest import mock

from flag_ab import compare  # tools/ is the script's directory
from maps_ab import add_model_arguments

from convroute.kernels import gemm
from convroute.kernels.gemm_tiles import SIZED


def one_launch(sliced: bool):
    """Gemm.plan without K splits: sliced, or the planned tile over all of K."""
    planned = gemm.Gemm.plan

    def plan(self, cols: int):
        tile, splits = planned(self, cols)
        if splits == 1:
            return tile, 1
        small = SIZED["small"]
        ktiles = self.k_pad // small.bk
        for ks in range(gemm.ceil_div(ktiles, gemm.SLICE_STEPS), 1, -1) if sliced else ():
            candidate = small.sliced(ks)
            if candidate.unfit(self.gpu.profile, self.precision) is None:
                return candidate, 1
        return tile, 1

    return lambda: mock.patch.object(gemm.Gemm, "plan", plan)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["squeezenet1_1", "mobilenet_v2"], rounds=100)
    args = parser.parse_args(argv)
    arms = {"splits": contextlib.nullcontext, "sliced": one_launch(True), "whole": one_launch(False)}
    return compare("GEMM K splits", arms, args)


if __name__ == "__main__":
    sys.exit(main())
