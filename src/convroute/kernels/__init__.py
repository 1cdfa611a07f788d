"""Conv algorithms: one module each, its WGSL beside its dispatch-grid code."""

from convroute.kernels.direct import Direct

ALGORITHMS = {k.name: k for k in (Direct,)}
