"""Held-out layers: the convs of real networks outside the shipped suites and the calibration grid, to score
routing on convs it was never fitted on (`convroute heldout` writes them; `calibrate`, `bench --suite heldout`
and `derive-rule --layers heldout` score on them).

Every network is built with random weights (nothing is downloaded) and run once on a random input; every
`aten.convolution` it dispatches is recorded with the module that ran it, so convs called as functions
(anti-aliasing blurs, "same" padding) are seen as convroute's front end sees them. Per network the distinct
convs are kept with their counts, named "network/module"; a conv that is a grid shape or a suite layer is
dropped (and reported). `per_network` caps the layers a network contributes: every dilated conv, then the
heaviest (FLOPs x count), then convs spread evenly over the rest.

Networks: torchvision's segmentation models (whole), detection models' backbone + FPN + heads (the modules
run alone, outside the detection model's control flow), and timm CNN families (needs timm; re-parameterised
for inference, as RepVGG deploys).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

from convroute.bench.suites import SUITES, layer_record, load_suite, suite_text
from convroute.calibration.grid import GPU_MAX_FLOPS, coverage_pool, full_grid, tiny_grid
from convroute.params import ConvParams, make_params
from convroute.router.derive import shape_key

SEGMENTATION = ("fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
DETECTION = ("retinanet_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "keypointrcnn_resnet50_fpn")
TIMM = ("resnest14d", "cspdarknet53", "tresnet_m", "ecaresnet26t", "regnety_016", "res2net50_26w_4s", "dla34",
        "ghostnet_100", "mixnet_s", "convnext_nano", "xception41", "repvgg_a2", "rexnet_100", "efficientnet_b0",
        "hrnet_w18_small")
NETWORKS = SEGMENTATION + DETECTION + TIMM
NATIVE_SIZE = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320}  # fixed-size detectors: their own size
ROI_SIDE = 14  # Keypoint R-CNN's RoI features (MultiScaleRoIAlign output), one RoI


@dataclass(frozen=True)
class Preset:
    """Input sizes (classification / segmentation / detection), layers per network, a FLOP cap per layer
    (dilated convs are kept whatever their FLOPs)."""

    size: int
    seg_size: int
    det_size: int
    per_network: int
    max_flops: float = float("inf")
    networks: tuple[str, ...] = NETWORKS


PRESETS = {
    "heldout": Preset(224, 512, 512, 8),  # GPUs: full-size inputs
    # CPU adapters (lavapipe) and CI: small inputs, few light layers a network, every dilated conv kept
    "heldout_small": Preset(64, 32, 64, 4, 1.2e8,
                            SEGMENTATION + ("retinanet_resnet50_fpn", "keypointrcnn_resnet50_fpn") + TIMM[:8]),
}


def regenerate_command(preset: str) -> str:
    return f"convroute heldout --preset {preset} --out src/convroute/bench/suites/{preset}.json"


class ConvRecorder:
    """Records every 4-D aten.convolution dispatched, with the innermost module running at the time."""

    def __init__(self):
        self.convs: list[tuple[str, ConvParams]] = []
        self.stack: list[str] = []

    @contextlib.contextmanager
    def watching(self, *modules):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder, handles = self, []

        def enter(name):
            return lambda _module, _args: recorder.stack.append(name)

        def leave(_module, _args, _output) -> None:  # a hook's non-None result would replace the output
            recorder.stack.pop()

        for root in modules:
            for name, module in root.named_modules():
                handles.append(module.register_forward_pre_hook(enter(name)))
                handles.append(module.register_forward_hook(leave))

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten.convolution.default and args[0].dim() == 4:
                    recorder.record(*args)
                return func(*args, **(kwargs or {}))

        try:
            with torch.no_grad(), Mode():
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def record(self, x, weight, _bias, stride, padding, dilation, transposed, output_padding, groups) -> None:
        w = tuple(weight.shape)
        if transposed:  # torch's transposed weight is [c_in, c_out / groups, kh, kw], as make_params takes it
            p = make_params(tuple(x.shape), w, stride, padding, dilation, groups, transposed=True,
                            output_padding=output_padding)
        else:
            p = make_params(tuple(x.shape), w, stride, padding, dilation, groups)
        self.convs.append((next((n for n in reversed(self.stack) if n), "conv"), p.with_batch(1)))


def run_network(name: str, preset: Preset) -> tuple[list[tuple[str, ConvParams]], str]:
    """(every conv the network dispatches on one input, in order, with its module; where it comes from)."""
    import torch

    import convroute.frontend  # noqa: F401  (before torchvision and timm: the triton load order, see frontend)

    torch.manual_seed(0)
    recorder = ConvRecorder()
    if name in TIMM:
        import timm
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(timm.create_model(name, pretrained=False).eval())
        with recorder.watching(model):
            model(torch.randn(1, 3, preset.size, preset.size))
        return recorder.convs, f"timm {timm.__version__} {name}(pretrained=False), {preset.size} px"
    import torchvision

    version = f"torchvision {torchvision.__version__.split('+')[0]}"
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
    if name in SEGMENTATION:
        with recorder.watching(model):
            model(torch.randn(1, 3, preset.seg_size, preset.seg_size))
        return recorder.convs, f"{version} {name}, whole, {preset.seg_size} px"
    size = NATIVE_SIZE.get(name, preset.det_size)
    x = torch.randn(1, 3, size, size)
    with recorder.watching(model):
        features = list(model.backbone(x).values())
        if name.startswith("keypointrcnn"):
            model.rpn.head(features)
            heads = model.roi_heads
            heads.keypoint_predictor(heads.keypoint_head(torch.randn(1, 256, ROI_SIDE, ROI_SIDE)))
            where = f"backbone + FPN + RPN head at {size} px, keypoint head on one {ROI_SIDE}x{ROI_SIDE} RoI"
        else:
            model.head(features)
            where = f"backbone + head at {size} px"
    return recorder.convs, f"{version} {name}, {where}"


def distinct(convs: list[tuple[str, ConvParams]]) -> list[tuple[str, ConvParams, int]]:
    """Each distinct conv once, named by its first module, with how often it ran, in order of first run; a
    module that ran several distinct convs (a detection head over each FPN level) names each by its input
    size too ("head.cls_logits@64x64")."""
    seen: dict[ConvParams, list] = {}
    for module, p in convs:
        seen.setdefault(p, [module, p, 0])[2] += 1
    modules = Counter(module for module, _, _ in seen.values())
    return [(f"{module}@{p.h}x{p.w}" if modules[module] > 1 else module, p, count)
            for module, p, count in seen.values()]


def known_shapes() -> set[str]:
    """The shapes routing is fitted or scored on: every calibration grid (GPU and CPU full grids and coverage
    pools, tiny; quick is a subset of full) and every shipped suite's layers."""
    shapes = full_grid(GPU_MAX_FLOPS) + full_grid() + coverage_pool(GPU_MAX_FLOPS) + coverage_pool() + tiny_grid()
    shapes += [layer.conv for name in SUITES for layer in load_suite(name).layers]
    return {shape_key(p) for p in shapes}


def pick(layers: list[tuple[str, ConvParams, int]], limit: int) -> list[tuple[str, ConvParams, int]]:
    """At most `limit` layers (more only where the dilated ones alone are more): every dilated one, then the
    heaviest by FLOPs x count, then an even spread of the rest; kept in the network's order."""
    chosen = [i for i, x in enumerate(layers) if max(x[1].dilation) > 1]
    rest = sorted((i for i in range(len(layers)) if i not in chosen), key=lambda i: -layers[i][1].flops * layers[i][2])
    heavy = max(0, (limit - len(chosen) + 1) // 2)
    chosen += rest[:heavy]
    rest = rest[heavy:]
    room = min(limit - len(chosen), len(rest))
    if room > 0:
        chosen += [rest[round(j * (len(rest) - 1) / max(1, room - 1))] for j in range(room)]
    return [layers[i] for i in sorted(set(chosen))]


@dataclass
class Generated:
    text: str
    layers: int
    networks: int
    dropped: list[str]  # "network/module shape": layers left out as grid or suite shapes
    capped: int  # distinct layers left out by per_network or max_flops


def generate(preset_name: str, networks: tuple[str, ...] | None = None, progress=print) -> Generated:
    """The held-out file's text for a preset (see PRESETS)."""
    preset = PRESETS[preset_name]
    known = known_shapes()
    layers, sources, dropped, capped = [], {}, [], 0
    for net in networks or preset.networks:
        convs, sources[net] = run_network(net, preset)
        every, mine = distinct(convs), []
        for module, p, count in every:
            if shape_key(p) in known:
                dropped.append(f"{net}/{module} {p.describe()}")
            elif p.flops <= preset.max_flops or max(p.dilation) > 1:
                mine.append((module, p, count))
        kept = pick(mine, preset.per_network)
        capped += len(every) - len(kept)
        layers += [layer_record(f"{net}/{module}", p, count) for module, p, count in kept]
        progress(f"{net}: {len(kept)} of {len(every)} distinct convs")
    head = {"name": preset_name, "source": f"held-out layers of {len(sources)} networks outside the suites and the "
                                           f"calibration grid, random weights; {regenerate_command(preset_name)}",
            "preset": {k: v for k, v in vars(preset).items() if k != "networks"}, "networks": sources}
    return Generated(suite_text(head, layers), len(layers), len(sources), dropped, capped - len(dropped))
