"""`convroute route`: which algorithm one conv takes on a device (or on every family), and why. No GPU work
unless --device is left out (then the adapter in use is asked for its profile)."""

from __future__ import annotations

import sys

from convroute.cli.common import add_shape_arguments, params_from_args
from convroute.device.gpu import resolve_profile
from convroute.device.profile import FAMILIES
from convroute.kernels.common import DTYPES
from convroute.report.table import fit_text, format_table
from convroute.router import POLICIES, route_params


def add_arguments(parser) -> None:
    add_shape_arguments(parser)
    parser.add_argument("--device", default=None,
                        help=f"a family ({', '.join(f for f in FAMILIES if f != 'unknown')}), 'all' for every "
                             f"family, or leave out for the adapter in use")
    parser.add_argument("--policy", default=None, help=f"one of {', '.join(POLICIES)} (default: CONVROUTE_POLICY "
                                                         "or seed)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="storage of activations and weights the conv would run in (calibrated and autotune "
                             "use that dtype's measurements)")


def run(args) -> int:
    try:
        p = params_from_args(args)
        families = [f for f in FAMILIES if f != "unknown"] if args.device == "all" else [args.device]
        decisions = [route_params(p, resolve_profile(f), args.policy, args.force_direct, args.dtype)
                     for f in families]
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(p.describe())
    if len(decisions) == 1:
        d = decisions[0]
        override = "override  force_direct (sliding-window convs take direct)\n" if d.force_direct else ""
        print(fit_text(f"device    {d.device}\npolicy    {d.policy}\n{override}dtype     {d.dtype}\n"
                       f"algorithm {d.algorithm}\nreason    {d.reason}"))
    else:
        if decisions[0].force_direct:
            print(f"policy {decisions[0].policy} + force_direct (sliding-window convs take direct)")
        print(format_table(["device", "algorithm", "reason"], [[d.device, d.algorithm, d.reason] for d in decisions],
                           left=3))
    return 0
