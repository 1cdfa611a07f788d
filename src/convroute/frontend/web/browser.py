"""Headless Chromium with WebGPU under Playwright, serving a bundle directory over http://127.0.0.1 (WebGPU
needs a secure context): for the tests and `convroute bench-web`. Chromium is found at $CONVROUTE_CHROMIUM,
else /usr/bin/chromium (Debian's package), else Playwright's own."""

from __future__ import annotations

import functools
import os
import shutil
import threading
import webbrowser
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

FLAGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--no-sandbox", "--headless=new",
         "--disable-dawn-features=timestamp_quantization")


BLANK = "__blank__.html"  # an empty page of the served origin, for scripts that import the bundle themselves


class BrowserMissing(RuntimeError):
    """No Playwright or no Chromium to drive."""


def chromium_path() -> str | None:
    found = os.environ.get("CONVROUTE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


class _Quiet(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".wgsl": "text/plain",
                      ".onnx": "application/octet-stream"}

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?")[0] != "/" + BLANK:
            return super().do_GET()
        body = b"<!doctype html><meta charset=utf-8><title>convroute</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve(directory):
    """An HTTP server on 127.0.0.1 (a free port) over `directory`; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def open_demo(directory, opener=None, wait=None) -> str:
    """Serve `directory` on 127.0.0.1 and open its index.html in the user's browser (`opener`, default
    webbrowser.open; a headless box has none, so the URL is printed too); serve until `wait()` returns, by
    default until Ctrl-C. The demo's URL."""
    with serve(directory) as url:
        demo = url + "index.html"
        print(f"serving {directory} at {url}: open {demo} in a WebGPU browser (Ctrl-C stops)", flush=True)
        (opener or webbrowser.open)(demo)
        try:
            (wait or _forever)()
        except KeyboardInterrupt:
            pass
    return demo


def _forever():
    threading.Event().wait()


@contextmanager
def chromium():
    """A headless Chromium with WebGPU (Playwright's sync API); BrowserMissing when there is none."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserMissing("pip package playwright is not installed (pip install playwright)") from exc
    path = chromium_path()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=path, headless=True, args=list(FLAGS))
        except Exception as exc:
            raise BrowserMissing(f"cannot start Chromium ({path or 'Playwright default'}): "
                                 f"{str(exc).splitlines()[0]}") from exc
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, timeout_s: float = 300):
    """A new page at `url` (its console errors are kept in page.errors)."""
    page = browser.new_context().new_page()  # its context may open more pages sharing its storage
    page.set_default_timeout(timeout_s * 1000)
    page.errors = []
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(url)
    return page


def adapter_info(page) -> dict | None:
    """The page's WebGPU adapter: vendor, architecture, features (None without WebGPU)."""
    return page.evaluate("""async () => {
      if (!navigator.gpu) return null;
      const a = await navigator.gpu.requestAdapter();
      if (!a) return null;
      return {vendor: a.info.vendor, architecture: a.info.architecture, device: a.info.device,
              description: a.info.description, features: [...a.features]};
    }""")


def run_bundle(page, bundle: str, x, options: dict | None = None) -> dict:
    """Load the bundle directory `bundle` (under the served root) in `page` with convroute.js's load `options`
    (the cache off unless given) and run it on `x` (a float32 array or tensor): {"y": the output as a flat list,
    "routes": m.routes()}."""
    return page.evaluate("""async ([bundle, x, options]) => {
      const C = (await import('./' + bundle + '/convroute.js')).default;
      const m = await C.load(bundle + '/manifest.json', options);
      const y = await m.run(new Float32Array(x));
      return {y: Array.from(y), routes: m.routes()};
    }""", [bundle, np.asarray(x, np.float32).ravel().tolist(), {"cache": False, **(options or {})}])
