"""Conv algorithms: one module each, its WGSL beside its dispatch-grid code."""

from convroute.kernels.direct import Direct
from convroute.kernels.im2col import Im2col

ALGORITHMS = {k.name: k for k in (Direct, Im2col)}
