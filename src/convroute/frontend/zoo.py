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
    """The torchvision model in eval mode, random weights (no weights downloaded) and random batch-norm
    statistics (identity BNs would hide folding errors)."""
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"weights": None}
    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        kwargs["weights_backbone"] = None
    model = torchvision.models.get_model(name, **kwargs).eval()
    randomize_batch_norms(model, seed)
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
