"""The calibration grid: synthetic conv shapes that span real CNNs without being any suite's layer.

Real networks run 3x3 and 1x1 convs at spatial sizes 7/14/28/56/112/224 with channels growing as the image
shrinks (channels x side stays within about 300..15000), plus a few stems (3 input channels, 7x7 stride 2),
depthwise convs (MobileNet), grouped convs (ResNeXt), dilated convs (segmentation) and transposed convs
(decoders). The grid covers the same ranges on other spatial sizes (6, 10, 20, 40, 80, 160, ...), so the
model has to generalise to the suites rather than remember them (tests/test_measure.py checks that no grid
shape is a suite layer).

Beyond that base grid, `coverage_pool` holds shapes along the axes real networks use and the suites do not:
dilation up to 24 (DeepLab's ASPP), asymmetric kernels (Inception's 1x7 / 7x1) and strides, grouped convs of
many group widths (ResNeXt, RegNet), large depthwise kernels (7..31: ConvNeXt, RepLKNet), channel counts that
are not multiples of 4, spatial sizes down to 1x1 (squeeze-excite, image pooling), transposed convs at more
sizes, larger batches. `convroute calibrate` does not measure the whole pool: after the base grid it picks pool
shapes one at a time where the model knows least (calibration.active), so the budget goes where the
measurements change routing.
"""

from __future__ import annotations

import random

from convroute.params import ConvParams, make_params

SIDES = (6, 10, 20, 40, 80, 160)
ODD_SIDES = (5, 9, 13, 17, 35, 73)  # odd sizes (Inception's 147/73/35/17, AlexNet's 13): partial tiles
CHANNELS = (16, 32, 64, 128, 256, 512, 1024)
FULL_MAX_FLOPS = 1.2e9  # keeps `convroute calibrate` under 10 minutes on a 2-core CPU (lavapipe)
GPU_MAX_FLOPS = 1e10  # GPUs also measure the heaviest layers: milliseconds each
QUICK_MAX_FLOPS = 3e8  # `calibrate --quick` on a CPU adapter: the light shapes (NOTES: how its time was chosen)


def conv(c_in, c_out, side, k, stride=1, *, groups=1, dilation=1, n=1, width=None, kw=None) -> ConvParams:
    """A conv padded to keep the size (at stride 1); `kw` for an asymmetric kernel k x kw."""
    kw = kw or k
    pad = (dilation * (k - 1) // 2, dilation * (kw - 1) // 2)
    return make_params((n, c_in, side, width or side), (c_out, c_in // groups, k, kw), stride, pad, dilation,
                       groups)


def deconv(c_in, c_out, side, k, stride, padding=0, output_padding=0, n=1) -> ConvParams:
    return make_params((n, c_in, side, side), (c_in, c_out, k, k), stride, padding, transposed=True,
                       output_padding=output_padding)


def _real_band(c: int, side: int, lo: int = 300, hi: int = 10240) -> bool:
    """Channel/side combinations that occur in real networks (few channels at large sizes and vice versa)."""
    return lo <= c * side <= hi


def full_grid(max_flops: float = FULL_MAX_FLOPS) -> list[ConvParams]:
    shapes: list[ConvParams] = []
    add = shapes.append
    band = [(c, s) for c in CHANNELS for s in SIDES if _real_band(c, s)]
    for i, (c, s) in enumerate(band):
        add(conv(c, c, s, 3))  # the body of ResNets, VGG, UNet
        add(conv(c, c, s, 1))  # bottleneck 1x1s, same width
        if s >= 10:
            add(conv(c, 2 * c, s, 3, 2))  # downsampling 3x3 stride 2
        # the families below alternate over the band, so each still spans it at half the cost
        if c <= 256 and i % 2 == 0:
            add(conv(c, 4 * c, s, 1))  # expansion 1x1 (ResNet-50 bottleneck out, MobileNet expand)
            add(conv(c, c, s, 3, groups=c))  # depthwise
        elif c <= 256:
            add(conv(4 * c, c, s, 1))  # projection 1x1
            add(conv(6 * c, 6 * c, s, 3, groups=6 * c))  # wide depthwise (MobileNetV2 expanded)
        if s >= 10 and i % 2 == 0:
            add(conv(c, 2 * c, s, 1, 2))  # shortcut 1x1 stride 2
        elif s >= 10:
            add(conv(c, c, s, 3, 2, groups=c))  # depthwise stride 2
    for c, s in [(32, 40), (64, 20), (128, 10), (256, 10)]:
        add(conv(c, 2 * c, s, 3))  # widening 3x3
        add(conv(2 * c, c, s, 3))  # narrowing 3x3 (decoder merges)
        add(conv(c, c, s, 5))
        add(conv(c, c, s, 5, groups=c))
        add(conv(c, c, s, 7, groups=c))
        add(conv(c, c, s, 3, groups=32 if c >= 128 else 8))  # ResNeXt-style grouped
        add(conv(c, c, s, 3, groups=2))
        add(conv(c, c, s, 3, dilation=2))  # segmentation
        add(conv(c, c, s, 3, dilation=4))
        add(deconv(2 * c, c, s, 2, 2))  # UNet up
        add(deconv(c, c, s, 3, 2, 1, 1))
        add(deconv(c, c // 2, s, 4, 2, 1))
    for c, s in [(c, s) for c in CHANNELS for s in ODD_SIDES if _real_band(c, s)]:
        add(conv(c, c, s, 3))
        add(conv(c, c, s, 1))
    for c, s in [(64, 120), (128, 60), (256, 30), (512, 15)]:  # heavy bodies (VGG, UNet): 1 GFLOP each
        add(conv(c, c, s, 3))
    for c, s in [(128, 120), (256, 60), (512, 30), (1024, 15)]:  # the heaviest (VGG, UNet): 4 GFLOP, GPUs only
        add(conv(c, c, s, 3))
    add(conv(512, 256, 40, 3))  # heavy decoder merges, GPUs only
    add(conv(256, 128, 80, 3))
    for side in (96, 160, 200):  # stems
        add(conv(3, 32, side, 3, 2))
        add(conv(3, 48, side, 7, 2))
        add(conv(3, 24, side, 5, 2))
    for side in (80, 160):
        add(conv(3, 32, side, 3))  # full-resolution stem (UNet, VGG)
        add(conv(32, 2, side, 1))  # segmentation head
    for c, s in [(64, 40), (128, 20), (256, 10)]:  # 3x3 bodies at batch 8 (~0.9 GFLOP): the batch-8 suites
        add(conv(c, c, s, 3, n=8))
    for n in (2, 4, 8):  # batch > 1 on a sample of the shapes above
        add(conv(64, 64, 20, 3, n=n))
        add(conv(128, 128, 10, 3, n=n))
        add(conv(64, 256, 20, 1, n=n))
        add(conv(256, 64, 20, 1, n=n))
        add(conv(96, 96, 40, 3, groups=96, n=n))
        add(conv(32, 64, 40, 3, 2, n=n))
    return [p for p in _unique(shapes) if p.flops <= max_flops]


def coverage_pool(max_flops: float = FULL_MAX_FLOPS) -> list[ConvParams]:
    """Shapes along the axes real networks use beyond the base grid; calibration.active picks among them."""
    shapes: list[ConvParams] = []
    add = shapes.append
    for d in (2, 4, 6, 12, 18, 24):  # DeepLab's backbones (2, 4) and ASPP branches (6..24), FCN
        for c_in, c_out, side in ((64, 64, 40), (256, 256, 20), (512, 512, 20), (512, 512, 40), (2048, 256, 10),
                                  (2048, 256, 20), (1024, 256, 40), (128, 128, 80)):
            add(conv(c_in, c_out, side, 3, dilation=d))
        add(conv(64, 64, 20, 3, dilation=d, n=4))
        add(conv(256, 256, 10, 3, groups=256, dilation=d))  # dilated depthwise (MobileNet DeepLab heads)
    for c, side in ((64, 35), (128, 17), (192, 17), (160, 9), (384, 9)):  # Inception's factorised kernels
        for k, kw in ((1, 7), (7, 1), (1, 3), (3, 1)):
            add(conv(c, c, side, k, kw=kw))
    add(conv(64, 64, 40, 3, (2, 1)))  # asymmetric strides (text recognisers)
    add(conv(128, 128, 20, 3, (1, 2)))
    add(conv(64, 128, 40, 1, (2, 1)))
    for width in (4, 8, 16, 24, 48, 64):  # group widths of ResNeXt (4..32 per group) and RegNet (8..64+)
        for c, side in ((96, 40), (192, 20), (384, 20), (768, 10)):
            if c % width == 0 and c // width > 1:
                add(conv(c, c, side, 3, groups=c // width))
                add(conv(c, c, side, 3, 2, groups=c // width))
    for k in (7, 9, 11, 13, 15, 21, 31):  # large depthwise kernels (ConvNeXt, RepLKNet, SegNeXt)
        for c, side in ((96, 40), (192, 20), (384, 10), (768, 6)):
            add(conv(c, c, side, k, groups=c))
    for c_in, c_out, side in ((3, 10, 80), (10, 18, 40), (18, 30, 20), (30, 58, 20), (58, 116, 10),
                              (116, 232, 10), (232, 232, 6), (21, 21, 40), (27, 27, 40)):  # not multiples of 4
        add(conv(c_in, c_out, side, 3))
        add(conv(c_in, c_out, side, 1))
    for c_in, c_out in ((256, 21), (512, 19), (64, 3), (96, 1), (128, 5)):  # class and box heads
        add(conv(c_in, c_out, 40, 1))
        add(conv(c_in, c_out, 20, 3))
    for side in (1, 2, 3):  # squeeze-excite and image pooling (1x1), the last stages of small inputs
        for c_in, c_out in ((2048, 256), (512, 128), (128, 512), (960, 240), (64, 16)):
            add(conv(c_in, c_out, side, 1))
        add(conv(512, 512, side, 3))
        add(conv(256, 256, side, 3, groups=256))
    for c, side in ((64, 80), (128, 40), (256, 20), (32, 160)):  # transposed up-sampling at more sizes
        add(deconv(c, c // 2, side, 4, 2, 1))
        add(deconv(c, c, side, 2, 2))
        add(deconv(c, c // 2, side, 3, 2, 1, 1))
        add(deconv(c, c, side, 3, 1, 1))
    for n in (16, 32):  # larger batches
        add(conv(32, 32, 20, 3, n=n))
        add(conv(64, 64, 10, 1, n=n))
        add(conv(64, 64, 10, 3, groups=64, n=n))
        add(conv(16, 32, 40, 3, 2, n=n))
    return [p for p in _unique(shapes) if p.flops <= max_flops]


def quick_grid(profile=None) -> list[ConvParams]:
    """`convroute calibrate --quick` (the first run's calibration): every fifth base shape of the light end of
    the base grid, in its measuring order; calibration.active adds pool shapes while its budget lasts, and
    refinement (router.refine) measures what it misses when routing. On GPUs the light end is larger."""
    cap = QUICK_MAX_FLOPS if profile is None or profile.family == "cpu" else FULL_MAX_FLOPS
    return measuring_order(full_grid(cap))[::5]


def measuring_order(shapes: list[ConvParams]) -> list[ConvParams]:
    """A fixed shuffle, so that a run cut short by its budget still spans the grid."""
    shapes = list(shapes)
    random.Random(1).shuffle(shapes)
    return shapes


def tiny_grid() -> list[ConvParams]:
    """A handful of tiny shapes, one per kind: for tests and a smoke run (`calibrate --grid tiny`)."""
    return [conv(8, 8, 10, 3), conv(16, 16, 6, 3), conv(8, 32, 10, 1), conv(32, 8, 6, 1), conv(8, 16, 10, 3, 2),
            conv(16, 16, 10, 3, groups=16), conv(16, 16, 6, 5, groups=16), conv(8, 8, 10, 3, groups=2),
            conv(8, 8, 10, 3, dilation=2), deconv(16, 8, 6, 2, 2), conv(3, 8, 20, 7, 2), conv(8, 8, 6, 3, n=2)]


GRIDS = ("full", "quick", "tiny")


def grid_shapes(grid: str, profile) -> list[ConvParams]:
    """The base shapes `convroute calibrate` measures on a device, in measuring order: CPU adapters skip the
    full grid's heaviest shapes (seconds each there); GPUs measure them, since extrapolating to VGG-size layers
    from 1-GFLOP shapes misrouted them (NOTES, session 6)."""
    if grid == "full":
        return measuring_order(full_grid(FULL_MAX_FLOPS if profile.family == "cpu" else GPU_MAX_FLOPS))
    if grid == "quick":
        return quick_grid(profile)
    if grid == "tiny":
        return tiny_grid()
    raise ValueError(f"unknown grid {grid!r}; known: {', '.join(GRIDS)}")


def pool_shapes(grid: str, profile) -> list[ConvParams]:
    """The coverage pool calibration.active picks from after the base grid (none for the tiny grid)."""
    if grid == "tiny":
        return []
    if profile.family == "cpu":
        return coverage_pool(QUICK_MAX_FLOPS if grid == "quick" else FULL_MAX_FLOPS)
    return coverage_pool(FULL_MAX_FLOPS if grid == "quick" else GPU_MAX_FLOPS)


def _unique(shapes: list[ConvParams]) -> list[ConvParams]:
    return list(dict.fromkeys(shapes))
