"""Conv algorithms: one module each, its WGSL beside its dispatch-grid code."""

from convroute.kernels.depthwise import Depthwise
from convroute.kernels.direct import Direct
from convroute.kernels.im2col import Im2col
from convroute.kernels.implicit_gemm import ImplicitGemm
from convroute.kernels.pointwise import Pointwise
from convroute.kernels.transposed import Transposed
from convroute.kernels.winograd import Winograd2, Winograd4

ALGORITHMS = {k.name: k for k in (Direct, Im2col, Pointwise, Depthwise, Transposed, ImplicitGemm,
                                  Winograd2, Winograd4)}
