"""Regenerate the layer suites shipped in src/convroute/bench/suites/*.json.

Each suite lists every distinct conv (Conv2d and ConvTranspose2d) of one architecture, as seen by forward
hooks on a 1x3x224x224 input, with how many times it occurs. Only the architecture is used (weights=None,
nothing is downloaded). Run: python3 tools/make_suites.py  (needs torch and torchvision); --check only compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

from convroute.bench.suites import suite_text

OUT = Path(__file__).resolve().parent.parent / "src" / "convroute" / "bench" / "suites"
INPUT_SHAPE = (1, 3, 224, 224)


class UNet(nn.Module):
    """A small UNet: 4 levels (64..512 channels), two 3x3 conv+ReLU per level, max-pool down,
    2x2 stride-2 ConvTranspose2d up, skip connections concatenated, 1x1 head to 2 classes."""

    def __init__(self, widths=(64, 128, 256, 512), classes=2):
        super().__init__()
        self.down = nn.ModuleList()
        c = 3
        for width in widths:
            self.down.append(self.block(c, width))
            c = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, width, 2, stride=2))
            self.merge.append(self.block(2 * width, width))
            c = width
        self.head = nn.Conv2d(c, classes, 1)

    @staticmethod
    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def architectures():
    version = f"torchvision {torchvision.__version__.split('+')[0]}"
    models = torchvision.models
    return {
        "resnet18": (models.resnet18(weights=None), f"torchvision.models.resnet18(weights=None), {version}"),
        "resnet50": (models.resnet50(weights=None), f"torchvision.models.resnet50(weights=None), {version}"),
        "mobilenet_v2": (models.mobilenet_v2(weights=None),
                         f"torchvision.models.mobilenet_v2(weights=None), {version}"),
        "vgg16": (models.vgg16(weights=None), f"torchvision.models.vgg16(weights=None), {version}"),
        "unet": (UNet(), "UNet defined in tools/make_suites.py: 4 levels 64..512 channels, 3x3 convs, "
                         "max-pool down, 2x2 stride-2 ConvTranspose2d up, skip concatenation"),
    }


def conv_layers(model: nn.Module) -> list[dict]:
    """Every distinct conv met in one forward pass, in order of first use, with its count."""
    seen: dict[tuple, dict] = {}
    hooks = []

    def record(name):
        def hook(module, inputs, _output):
            _, c_in, h, w = inputs[0].shape
            transposed = isinstance(module, nn.ConvTranspose2d)
            layer = {
                "name": name, "c_in": c_in, "h": h, "w": w, "c_out": module.out_channels,
                "kernel": list(module.kernel_size), "stride": list(module.stride),
                "padding": list(module.padding), "dilation": list(module.dilation), "groups": module.groups,
                "transposed": transposed,
                "output_padding": list(module.output_padding) if transposed else [0, 0],
            }
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in layer.items() if k != "name")
            if key in seen:
                seen[key]["count"] += 1
            else:
                seen[key] = layer | {"count": 1}
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(module.register_forward_hook(record(name)))
    model.eval()
    with torch.no_grad():
        model(torch.randn(INPUT_SHAPE))
    for h in hooks:
        h.remove()
    return list(seen.values())


def render(name: str, model: nn.Module, source: str) -> str:
    """The suite's JSON text: one line per layer, so diffs stay readable."""
    head = {"name": name, "source": source, "input_shape": list(INPUT_SHAPE)}
    return suite_text(head, conv_layers(model))


def main(argv=None) -> int:
    """Write the suites; with --check, only report (exit 1) the shipped files that differ from the architectures."""
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    stale = []
    for name, (model, source) in architectures().items():
        path = OUT / f"{name}.json"
        text = render(name, model, source)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        layers = json.loads(path.read_text())["layers"]
        print(f"{path}: {len(layers)} distinct convs, {sum(layer['count'] for layer in layers)} in all")
    if stale:
        print(f"stale: {', '.join(stale)}; run python3 tools/make_suites.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
