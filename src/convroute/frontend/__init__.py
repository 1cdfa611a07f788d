"""The front end: torch.export a whole PyTorch model and run it on the GPU (needs torch)."""

import sys


def _import_torch_export() -> None:
    """torch.export imports triton, whose bundled LLVM crashes the process when loaded after Mesa's LLVM
    (lavapipe's, loaded when the GPU opens). Import it while no GPU is open; if one already is, keep
    triton out (exporting never needs it)."""
    from convroute.device import gpu

    if gpu._GPU is not None and "triton" not in sys.modules:
        import logging

        sys.modules["triton"] = None
        logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)  # "triton not found" notices
    import torch.export._trace  # noqa: F401  (torch.export imports it, and triton, lazily)


_import_torch_export()

from convroute.frontend.export import CompileError, ExportError  # noqa: E402
from convroute.frontend.program import Program, Summary, compile  # noqa: E402

__all__ = ["CompileError", "ExportError", "Program", "Summary", "compile"]
