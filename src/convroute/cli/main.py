"""The `convroute` command line: one module per command, convroute.cli.<name>_cmd, with add_arguments(parser)
and run(args)."""

from __future__ import annotations

import argparse
import importlib
import sys

from convroute.report.table import COLUMNS, width_limit

DESCRIPTION = """\
Convolutions and whole CNNs on any GPU through WebGPU compute shaders, with each conv layer routed to the
algorithm that runs it fastest on this device.

first run:
  convroute calibrate --quick                         measure this device (once per device and driver)
  convroute run --model resnet18 --policy calibrated  a torchvision model on the GPU, checked against torch"""

EPILOG = "`convroute COMMAND --help` describes a command's options. Output fits 120 columns; --wide lifts that."

COMMANDS = {  # name: what it does, in one line (the module is convroute.cli.<name with _ for ->_cmd)
    "devices": "list the GPUs (WebGPU adapters) with their driver, limits and features",
    "route": "show which algorithm one conv shape takes on a GPU family, and why",
    "conv": "run one conv shape with every algorithm: check each against float64, time each",
    "run": "run a torchvision model on the GPU and on torch: error, routing table, latency",
    "calibrate": "measure this device's algorithms; the calibrated policy routes by the result",
    "bench": "time every algorithm on a network's conv layers and score each routing policy",
    "suite": "route, run and check every conv layer of a network, with times",
    "selftest": "fuzz every algorithm against float64 on this device; routing avoids what was wrong",
    "derive-rule": "fit a small routing rule on calibrations; print it as Python, C++ and JavaScript",
    "heldout": "write held-out layers: convs of networks outside the suites and the grid, to score routing on",
    "zoo": "many CNNs (torchvision, timm:NAME) against peers: error, GPU and CPU ops, latency; table, plot",
    "export-web": "write a model as a browser bundle: plan, WGSL, weights, convroute.js and a demo page",
    "bench-web": "run a bundle's bench page in headless Chromium: convroute against ONNX Runtime Web",
}


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<12} {help_text}" for name, help_text in COMMANDS.items())
    parser = argparse.ArgumentParser(prog="convroute", usage="convroute [-h] COMMAND [options]",
                                     description=f"{DESCRIPTION}\n\ncommands:\n{commands}", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--wide", action="store_true",
                        help=f"print tables and long lines whole instead of fitting {COLUMNS} columns")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"convroute.cli.{name.replace('-', '_')}_cmd")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text, parents=[common]))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"convroute.cli.{args.command.replace('-', '_')}_cmd")
    with width_limit(None if args.wide else COLUMNS):
        return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
