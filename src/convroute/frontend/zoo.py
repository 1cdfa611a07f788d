"""The torchvision models the front end is verified on (random weights, no downloads), and one check of a
compiled model against torch: shared by tests/test_models.py (CI, small inputs) and tools/check_models.py
(full size on a real GPU)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from convroute.measure.reference import max_relative_error

# Every CNN classification family: (smallest, largest) variants; a family of one model lists it once.
FAMILIES = {
    "alexnet": ("alexnet",),
    "convnext": ("convnext_tiny", "convnext_large"),
    "densenet": ("densenet121", "densenet161", "densenet201"),
    "efficientnet": ("efficientnet_b0", "efficientnet_b7"),
    "efficientnet_v2": ("efficientnet_v2_s", "efficientnet_v2_l"),
    "googlenet": ("googlenet",),
    "inception": ("inception_v3",),
    "mnasnet": ("mnasnet0_5", "mnasnet1_3"),
    "mobilenet_v2": ("mobilenet_v2",),
    "mobilenet_v3": ("mobilenet_v3_small", "mobilenet_v3_large"),
    "regnet_x": ("regnet_x_400mf", "regnet_x_32gf"),
    "regnet_y": ("regnet_y_400mf", "regnet_y_128gf"),
    "resnet": ("resnet18", "resnet152"),
    "resnext": ("resnext50_32x4d", "resnext101_32x8d"),
    "wide_resnet": ("wide_resnet50_2", "wide_resnet101_2"),
    "shufflenet_v2": ("shufflenet_v2_x0_5", "shufflenet_v2_x2_0"),
    "squeezenet": ("squeezenet1_1", "squeezenet1_0"),
    "vgg": ("vgg11", "vgg19_bn"),
}
SEGMENTATION = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
SMALLEST = tuple(variants[0] for variants in FAMILIES.values()) + SEGMENTATION
ALL = tuple(name for variants in FAMILIES.values() for name in variants) + SEGMENTATION

FULL_SIZE = {"inception_v3": 299, **{name: 256 for name in SEGMENTATION}}  # else 224
MIN_SIZE = {"inception_v3": 75, "alexnet": 63}  # else 32
TOLERANCE = 1e-4  # relative error vs torch float32 on the CPU: max|y - ref| / max|ref|


def full_size(name: str) -> int:
    return FULL_SIZE.get(name, 224)


def min_size(name: str) -> int:
    return MIN_SIZE.get(name, 32)


def build(name: str, seed: int = 1) -> torch.nn.Module:
    """The torchvision model in eval mode, random weights (no weights downloaded) and batch-norm statistics
    settled on random images (settle_batch_norms; identity BNs would hide folding errors)."""
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"weights": None}
    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        kwargs["weights_backbone"] = None
    model = torchvision.models.get_model(name, **kwargs).eval()
    settle_batch_norms(model, seed, full_size(name))
    return model


def outputs(result) -> list[torch.Tensor]:
    """A model's output tensors in a fixed order (segmentation models return a dict)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [result[k] for k in sorted(result)]
    return [t for item in result for t in outputs(item)]


def rel_error(result, reference) -> float:
    """max |y - ref| / max |ref| over all outputs; inf for a shape mismatch or non-finite values."""
    got, want = outputs(result), outputs(reference)
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for y, ref in zip(got, want, strict=True):
        y, ref = y.detach().double().cpu().numpy(), ref.detach().double().cpu().numpy()
        if not np.isfinite(y).all():
            return float("inf")
        worst = max(worst, max_relative_error(y, ref))
    return worst


@dataclass
class Check:
    model: str
    size: int
    batch: int
    compile_s: float = 0.0  # export + plan for this input shape
    rel_err: float = float("inf")
    gpu_ops: int = 0
    cpu_ops: int = 0
    conv_gpu_share: float = 0.0  # share of conv FLOPs on the GPU
    error: str = ""  # why it failed to compile or run

    @property
    def passed(self) -> bool:
        return not self.error and self.rel_err < TOLERANCE and self.cpu_ops == 0 and self.conv_gpu_share == 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check(program, model, x: torch.Tensor, name: str) -> Check:
    """Run `program` on `x` (building its plan for this shape if new) and compare with `model` in float32."""
    row = Check(name, x.shape[-1], x.shape[0])
    start = time.perf_counter()
    program._plan_for([x])  # export + plan, timed apart from the run
    row.compile_s = time.perf_counter() - start
    got = program(x)
    with torch.no_grad():
        want = model(x)
    row.rel_err = rel_error(got, want)
    s = program.summary()
    row.gpu_ops, row.cpu_ops = sum(s.gpu_ops.values()), len(s.cpu_ops)
    row.conv_gpu_share = s.conv_gpu_share
    return row


def randomize_zero_weights(model, seed: int) -> None:
    """Weights of two or more dims that start all zero (timm's zero-initialized heads: resmlp, gmlp, hiera) drawn
    as torch's default Linear init would: else the model's output is all zeros and a check against torch says
    nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and param.is_floating_point() and not param.any():
                bound = (param[0].numel()) ** -0.5
                param.copy_((torch.rand(param.shape, generator=g) * 2 - 1) * bound)


def randomize_batch_norms(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)


def settle_batch_norms(model, seed: int, size: int) -> None:
    """randomize_batch_norms, then each batch norm's running statistics taken from what reaches it in one eval
    forward pass over two random images of side `size`, in order: its per-channel mean, and its layer's mean
    variance times U(0.5, 1.5) per channel. As in a trained network every batch norm's output then has a scale
    near 1, so float16 holds the activations: with random statistics alone cspdarknet53, repvgg_a2, res2net50
    and inception_v3 reached 1e5-1e14 (float16's largest is 65504) and MobileNets' activations faded to their
    biases. A layer's variance, not each channel's: a channel the ReLUs left near constant is not blown up by
    1/sqrt(eps). Statistics taken at a smaller size than the model runs at do not transfer (inception_v3's
    3x3 maps at 75 px)."""
    randomize_batch_norms(model, seed)
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None]
    if not norms:
        return
    g = torch.Generator().manual_seed(seed)

    def settle(norm, args):
        x = args[0].double()
        dims = [0, *range(2, x.ndim)]
        norm.running_mean.copy_(x.mean(dims))
        norm.running_var.copy_(x.var(dims).mean() * (torch.rand(norm.num_features, generator=g) + 0.5))

    hooks = [norm.register_forward_pre_hook(settle) for norm in norms]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(2, 3, size, size, generator=g))
    finally:
        for hook in hooks:
            hook.remove()


# -- `convroute zoo`'s default zoo: torchvision's smallest of each CNN family, and timm families (small configs)
TIMM = "timm:"
TIMM_FAMILIES = {
    "cspnet": "cspdarknet53",
    "tresnet": "tresnet_m",
    "resnest": "resnest14d",
    "ecaresnet": "ecaresnet26t",
    "resnet (timm)": "resnet50d",
    "dla": "dla34",
    "repvgg": "repvgg_a2",
    "inception_v4": "inception_v4",
    "hrnet": "hrnet_w18_small",
    "regnet (timm)": "regnety_016",
    "res2net": "res2net50_14w_8s",
    "efficientnet (timm)": "efficientnet_b0",
    "mobilenetv3": "mobilenetv3_large_100",
    "mobilenetv4": "mobilenetv4_conv_small",
    "rexnet": "rexnet_100",
    "mixnet": "mixnet_s",
    "lcnet": "lcnet_050",
    "xception": "xception41",
    "convnext (timm)": "convnext_atto",
    "ghostnet": "ghostnet_100",
}
TORCHVISION_ZOO = {family: variants[0] for family, variants in FAMILIES.items()}
DEFAULT_ZOO = {**TORCHVISION_ZOO, **{family: TIMM + name for family, name in TIMM_FAMILIES.items()}}


class UnknownModel(ValueError):
    """A zoo name that neither torchvision nor timm knows (or timm: without timm installed)."""


def is_timm(name: str) -> bool:
    return name.startswith(TIMM)


def import_timm():
    try:
        import timm
    except ImportError:
        raise UnknownModel("timm: models need timm, which is not installed: pip install timm") from None
    return timm


def check_name(name: str, segmentation: bool = False) -> None:
    """Raise UnknownModel unless `name` is a torchvision classification model (or, with `segmentation`, one of
    torchvision's segmentation models) or timm:NAME of a timm model."""
    if is_timm(name):
        timm = import_timm()
        if not timm.is_model(name[len(TIMM):]):
            raise UnknownModel(f"unknown timm model {name[len(TIMM):]!r} (timm {timm.__version__}; "
                               "timm.list_models() lists them)")
        return
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if segmentation:
        known += torchvision.models.list_models(module=torchvision.models.segmentation)
    if name not in known:
        kinds = "classification or segmentation model" if segmentation else "classification model"
        raise UnknownModel(f"unknown model {name!r}: not a torchvision {kinds} (torchvision.models.list_models() "
                           f"lists them); timm models are named timm:NAME")


def default_size(name: str) -> int:
    """A model's input side: timm's default configuration for timm:NAME, else full_size (224, inception 299)."""
    if is_timm(name):
        return import_timm().models.get_pretrained_cfg(name[len(TIMM):]).input_size[-1]
    return full_size(name)


def build_any(name: str, seed: int = 1) -> torch.nn.Module:
    """`build` for torchvision names, timm:NAME through timm.create_model; random weights (none left all zero), no
    downloads, batch-norm statistics settled on random images at its default size, eval mode."""
    if not is_timm(name):
        return build(name, seed)
    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model(name[len(TIMM):], pretrained=False).eval()
    randomize_zero_weights(model, seed)
    settle_batch_norms(model, seed, default_size(name))
    return model
