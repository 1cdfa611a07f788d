"""`convroute <command>`: each command lives in convroute.cli.<name> with add_arguments(p) and run(args)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    # name: one-line help; module convroute.cli.<name> (or <name>_cmd when the name is a keyword)
    "devices": "list every WebGPU adapter with vendor, type, backend, driver, limits and features",
    "route": "which algorithm one conv shape takes on a device family, and why",
    "conv": "run one conv shape with every applicable algorithm: check against the reference, time each",
    "suite": "route, run and check every conv layer of a network suite on the adapter in use, with times",
    "calibrate": "time every algorithm on a grid of shapes and save this device's routing profile",
    "selftest": "fuzz every algorithm against a float64 reference on this device; routing avoids what was wrong",
    "bench": "time every algorithm on a network's conv layers and score each policy against the fastest",
    "derive-rule": "fit a small routing rule on calibrations; print it as Python and C++, score it on suites",
    "run": "run a whole torchvision model on the GPU and on torch: error, routing table, latency of both",
    "export-web": "write a model as a browser bundle: plan, WGSL, weights, convroute.js and a demo page",
    "bench-web": "run a bundle's bench page in headless Chromium: convroute against ONNX Runtime Web",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convroute", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"convroute.cli.{name.replace('-', '_')}_cmd")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"convroute.cli.{args.command.replace('-', '_')}_cmd")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
