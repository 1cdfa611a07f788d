"""Models as browser bundles, each run in headless Chromium (WebGPU on SwiftShader here) against torch float32.

usage: python tools/web_sweep.py [MODEL ...] [--size N] [--family cpu,unknown] [--exclude ALGOS]
       (torchvision names or timm:NAME; default: the default zoo. Size default 64 px, 96 for inceptions and
       googlenet; a model torch itself cannot run at that size is reported and skipped)

Per model and plan family (cpu: the plan software adapters pick; unknown: the generic GPU plan, which SwiftShader
only runs when forced, and whose direct kernels stall its shader compiler for minutes: `--exclude direct`), the
bundle's fixed route (candidates 1, float32) and its relative error (max|y - ref| / max|ref|), or why it failed.
Needs Playwright and Chromium (see README).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import convroute.frontend  # noqa: F401  (before torchvision and timm, see frontend/__init__)
from convroute.frontend import zoo
from convroute.frontend.web import export_web
from convroute.frontend.web.browser import BLANK, adapter_info, chromium, open_page, run_bundle, serve
from convroute.measure.reference import max_relative_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(zoo.DEFAULT_ZOO.values()))
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--family", default="cpu")
    parser.add_argument("--exclude", default="")
    args = parser.parse_args(argv)
    exclude = tuple(filter(None, args.exclude.split(",")))
    root = Path(tempfile.mkdtemp(prefix="web_sweep"))
    failed = 0
    with serve(root) as url, chromium() as browser:
        page = open_page(browser, url + BLANK)
        info = adapter_info(page) or {}
        print(f"adapter: {info.get('vendor')} {info.get('architecture')}", flush=True)
        for name in args.models:
            zoo.check_name(name)
            size = args.size or (96 if "inception" in name or "googlenet" in name else 64)
            model = zoo.build_any(name, 0).eval()
            x = torch.randn(1, 3, size, size)
            try:
                with torch.no_grad():
                    want = model(x)
            except Exception as exc:  # the architecture's own size limits
                print(f"{name}: torch itself fails at {size} px ({str(exc)[:80]}); skipped", flush=True)
                continue
            for family in args.family.split(","):
                start, bundle = time.perf_counter(), f"{name.replace(':', '_')}-{family}"
                try:
                    export_web(model, (x,), root / bundle, dtype="float32", family=family, candidates=1,
                               exclude=exclude, name=bundle)
                    got = run_bundle(page, bundle, x.numpy(), {"route": "default", "family": family})["y"]
                    error = max_relative_error(torch.tensor(got).reshape(want.shape), want)
                    what = f"rel. error {error:.2e}"
                    failed += not error < zoo.TOLERANCE
                except Exception as exc:
                    what, failed = f"FAILED {type(exc).__name__}: {str(exc)[:200]}", failed + 1
                print(f"{name} ({size} px, {family} plan): {what}, {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
