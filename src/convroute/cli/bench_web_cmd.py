"""`convroute bench-web DIR`: open DIR's bench.html (written by `convroute export-web --compare ort`) in
headless Chromium (WebGPU; on a box without a GPU, SwiftShader) and print convroute's and ONNX Runtime Web's
latency (median, p10, p90 over interleaved rounds) and their ratio."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="a bundle written by convroute export-web --compare ort")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per engine (default 20)")
    parser.add_argument("--budget-ms", type=int, default=8000, help="the page's time for measuring routes")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the page (default 1800)")


def run(args) -> int:
    return bench(args.dir, args.rounds, args.budget_ms, args.timeout)


def bench(directory, rounds: int = 20, budget_ms: int = 8000, timeout_s: float = 1800) -> int:
    from convroute.frontend.web.browser import BrowserMissing, chromium, open_page, serve

    if not (Path(directory) / "bench.html").exists():
        print(f"error: {directory}/bench.html is missing: export with --compare ort", file=sys.stderr)
        return 2
    try:
        with serve(directory) as url, chromium() as browser:
            page = open_page(browser, f"{url}bench.html?rounds={rounds}&budget={budget_ms}&cache=0", timeout_s)
            start, said = time.time(), ""
            while time.time() - start < timeout_s:
                found = page.evaluate("() => window.benchResult || (window.benchError && {error: window.benchError})")
                if found:
                    break
                status = page.locator("#status").text_content()
                if status != said:
                    print(f"[{time.time() - start:6.0f} s] {status}", file=sys.stderr, flush=True)
                    said = status
                time.sleep(2)
            else:
                print(f"error: the bench page gave no result in {timeout_s:.0f} s", file=sys.stderr)
                return 1
    except BrowserMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "error" in found:
        print(f"error: the bench page failed: {found['error']}", file=sys.stderr)
        return 1
    routes = found["routes"]
    print(f"{found['model']} {'x'.join(map(str, found['inputShape']))}, convroute {found['dtype']} {routes['family']} "
          f"plan ({routes['familyReason']}), {found['rounds']} interleaved rounds, adapter {routes['adapter']}")
    print(f"{'engine':<18}{'median ms':>11}{'p10':>10}{'p90':>10}")
    for row in found["rows"]:
        print(f"{row['engine']:<18}{row['median']:>11.2f}{row['p10']:>10.2f}{row['p90']:>10.2f}")
    print(f"convroute / onnxruntime-web (median): {found['ratio']:.3f}x; outputs differ by {found['relDiff']:.2e} "
          f"(max abs difference / max |output|)")
    return 0
