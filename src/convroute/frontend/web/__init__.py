"""The routed program in a web browser: `export_web` writes a plan, its WGSL, its weights and a no-build ES
module (`convroute.js`) that runs it on the page's WebGPU device, timing each conv's candidate algorithms there."""

from convroute.frontend.web.export import export_program, export_web
from convroute.frontend.web.plan import NotForBrowser

__all__ = ["NotForBrowser", "export_program", "export_web"]
