"""`convroute heldout`: write a held-out layer file (bench/heldout.py) from networks outside the suites and the
calibration grid; `--check` compares the shipped one with what the installed torchvision and timm give."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from convroute.cli.common import EXTRAS, check_extras, installed


def add_arguments(parser) -> None:
    from convroute.bench.heldout import NETWORKS, PRESETS

    parser.add_argument("--preset", default="heldout", choices=list(PRESETS),
                        help="heldout: full-size inputs (224 px, segmentation and detection 512 px), 8 layers a "
                             "network, for GPUs; heldout_small: 64 px (segmentation 32), 4 light layers a network, "
                             "for CPU adapters (default heldout)")
    parser.add_argument("--networks", default="", metavar="NAMES",
                        help=f"comma-separated subset of the preset's networks (of {', '.join(NETWORKS)})")
    parser.add_argument("--out", metavar="FILE.json", help="where to write it (default: print it)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped file of this preset; exit 1 if it differs")
    parser.add_argument("--dropped", action="store_true", help="list the convs left out as grid or suite shapes")


def run(args) -> int:
    if not check_extras({"torch": EXTRAS["torch"]}, "convroute heldout"):
        return 2
    from convroute.bench.heldout import PRESETS, TIMM, generate

    networks = tuple(n.strip() for n in args.networks.split(",") if n.strip()) or None
    unknown = sorted(set(networks or ()) - set(PRESETS[args.preset].networks))
    if unknown:
        print(f"error: --networks {', '.join(unknown)}: not in preset {args.preset} "
              f"({', '.join(PRESETS[args.preset].networks)})", file=sys.stderr)
        return 2
    timm_networks = sorted(set(networks or PRESETS[args.preset].networks) & set(TIMM))
    if timm_networks and not installed("timm"):
        print(f"error: convroute heldout needs timm for {', '.join(timm_networks)}: pip install timm "
              f"(or pick torchvision networks with --networks)", file=sys.stderr)
        return 2
    generated = generate(args.preset, networks, progress=lambda line: print(line, file=sys.stderr))
    print(f"{generated.layers} layers of {generated.networks} networks; {generated.capped} distinct convs left out "
          f"by the preset's cap; {len(generated.dropped)} left out as grid or suite shapes", file=sys.stderr)
    if args.dropped:
        print("\n".join(f"  {line}" for line in generated.dropped), file=sys.stderr)
    if args.check:
        shipped = resources.files("convroute.bench.suites").joinpath(f"{args.preset}.json").read_text()
        same = shipped == generated.text
        print(f"shipped {args.preset}.json {'matches' if same else 'differs from'} the installed networks")
        return 0 if same else 1
    if args.out:
        Path(args.out).write_text(generated.text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(generated.text, end="")
    return 0
