"""Pieces the commands share: shape arguments, the float32 bound, and the check that the optional packages a
command needs are installed."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from convroute.measure.reference import TOLERANCES
from convroute.params import ConvParams, make_params

TOLERANCE = TOLERANCES["float32"]


def ints(text: str) -> tuple[int, ...]:
    """'1,64,56,56' or '2' -> ints (argparse type)."""
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def int_or_pair(text: str):
    values = ints(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected an int or a pair 'h,w', got {text!r}")
    return values[0] if len(values) == 1 else values


def add_shape_arguments(parser) -> None:
    parser.add_argument("--input", type=ints, required=True, metavar="N,C,H,W", help="input shape, NCHW")
    parser.add_argument("--weight", type=ints, required=True, metavar="O,I,KH,KW",
                        help="weight shape in PyTorch layout: [C_out, C_in/groups, Kh, Kw], or for --transposed "
                             "[C_in, C_out/groups, Kh, Kw]")
    parser.add_argument("--stride", type=int_or_pair, default=1, metavar="S|SH,SW")
    parser.add_argument("--padding", type=int_or_pair, default=0, metavar="P|PH,PW")
    parser.add_argument("--dilation", type=int_or_pair, default=1, metavar="D|DH,DW")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--transposed", action="store_true", help="conv_transpose2d instead of conv2d")
    parser.add_argument("--output-padding", type=int_or_pair, default=0, metavar="P|PH,PW",
                        help="extra output rows/columns of a transposed conv")
    parser.add_argument("--force-direct", action="store_true", default=None,
                        help="send every sliding-window conv to direct (as CONVROUTE_FORCE_DIRECT=1)")


def params_from_args(args) -> ConvParams:
    return make_params(args.input, args.weight, args.stride, args.padding, args.dilation, args.groups,
                       transposed=args.transposed, output_padding=args.output_padding)


# the modules of each extra that some command needs
EXTRAS = {"torch": ("torch", "torchvision"), "report": ("matplotlib", "tqdm"), "peers": ("ncnn", "pnnx")}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (torchvision would load triton: see frontend)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_extras(needs: dict[str, tuple[str, ...]], purpose: str, required: bool = True) -> bool:
    """Before a command starts working: True when every module in `needs` (extra -> modules) is installed;
    else one line on stderr naming what is missing and what to install, as an error (required) or a note (the
    command goes on without it), and False."""
    missing = {extra: [m for m in modules if not installed(m)] for extra, modules in needs.items()}
    missing = {extra: modules for extra, modules in missing.items() if modules}
    if not missing:
        return True
    names = " and ".join(m for modules in missing.values() for m in modules)
    verb = "is" if sum(map(len, missing.values())) == 1 else "are"
    line = f"{purpose} needs {names}, which {verb} not installed: pip install 'convroute[{','.join(missing)}]'"
    print(f"{'error' if required else 'note'}: {line}", file=sys.stderr)
    return False
