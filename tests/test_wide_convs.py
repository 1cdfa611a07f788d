"""Convs whose weights pass the device's largest storage binding run on the GPU as output-channel chunks that a
concat joins (frontend/wide_convs.py), checked against torch in float64 with the binding limit lowered so that
small convs stand in for timm VGG's 411 MB head."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.frontend import lower, wide_convs  # noqa: E402
from convroute.frontend.graph import Graph, Node, Ref, aten  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import randomize_batch_norms, reference, rel_error  # noqa: E402

pytestmark = pytest.mark.gpu

BINDING = "max-storage-buffer-binding-size"


class WideHead(nn.Module):
    """A stem, then two wide convs of its output: a 5x5 stride-2 head with a folded batch norm (64 x 25 x 4 =
    6400 bytes of fp32 weights a channel, 8000 packed: 300 channels pass a 2 MB binding) and a 3x3 stride-1
    conv (2304 bytes a channel: 512 channels fit, unless Winograd's 4x takes them)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.head, self.bn = nn.Conv2d(64, 300, 5, stride=2, bias=False), nn.BatchNorm2d(300)
        self.mix = nn.Conv2d(64, 512, 3, padding=1)
        self.up = nn.ConvTranspose2d(64, 384, 5, padding=2)  # 6400 bytes a channel, 8000 packed

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = F.relu(self.bn(self.head(s)))
        return torch.cat([y.mean((2, 3)), self.mix(s).mean((2, 3)), self.up(s).mean((2, 3))], 1)


def compiled(dtype: str, batch: int, limit: int | None, monkeypatch):
    if limit is not None:
        monkeypatch.setitem(get_gpu().profile.limits, BINDING, limit)
    torch.manual_seed(0)
    model = WideHead().eval()
    with torch.no_grad():
        randomize_batch_norms(model)
    x = torch.randn(batch, 3, 16, 16)
    program = convroute.compile(model, (x,), dtype=dtype)
    return program, rel_error(program(x), reference(model, x))


def winograd_for_mix(monkeypatch):
    """Route `mix` (and its chunks) to winograd4, whatever the policy says."""
    route = lower.route_conv

    def routed(ctx, node, p):
        decision = route(ctx, node, p)
        return dataclasses.replace(decision, algorithm="winograd4") if (p.kh, p.kw, p.c_in) == (3, 3, 64) else decision
    monkeypatch.setattr(lower, "route_conv", routed)


def chunked(program) -> list[str]:
    return [r["name"] for r in program.convs() if any("the weights pass one storage binding" in n for n in r["fused"])]


def joins(program) -> list:
    nodes = [step.node for step in program.plan.steps] + list(program.plan.aliases)
    return [n for n in nodes if n.op == "cat" and any("output-channel chunks" in note for note in n.notes)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("winograd", [False, True])
def test_convs_past_one_binding_run_as_output_chunks(dtype, batch, winograd, monkeypatch):
    """At a 2 MB binding (fp32; 1 MB for fp16): head in 2 chunks (152 + 148 channels: 256 padded channels fit),
    up (transposed) in 2 of 192; mix whole, unless routed to Winograd (36 x 64 x 4 bytes a channel: 128 padded
    channels fit, so 4 chunks of 128; chunks of 176 pad to 256 on GPUs and passed the binding there)."""
    if winograd:
        winograd_for_mix(monkeypatch)
    itemsize = 2 if dtype == "float16" else 4
    program, error = compiled(dtype, batch, 2_000_000 * itemsize // 4, monkeypatch)
    assert error < TOLERANCES[dtype]
    s = program.summary()
    assert not s.cpu_ops, s
    split = 2 + 2 + (4 if winograd else 0)
    assert len(chunked(program)) == split, chunked(program)
    assert s.gpu_ops["convolution"] == 1 + split + (0 if winograd else 1)
    assert {r["algorithm"] for r in program.convs() if r["name"].startswith("up")} == {"transposed"}
    assert len(joins(program)) == (3 if winograd else 2)


def test_convs_that_fit_stay_whole(monkeypatch):
    program, error = compiled("float32", 1, None, monkeypatch)
    assert error < TOLERANCES["float32"]
    assert program.summary().gpu_ops["convolution"] == 4
    assert not chunked(program) and not joins(program)


def test_chunk_widths():
    """The fewest equal chunks, multiples of CHANNEL_STEP, each within the binding."""
    weight = torch.zeros(4096, 512, 7, 7)
    conv = Node("fc1", aten.convolution.default, (Ref("x"), Ref("w"), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
                meta=torch.empty(1, 4096, 1, 1, device="meta"))
    g = Graph(["x"], {"w": weight}, [conv], [Ref("fc1")])

    def width(binding, itemsize, winograd=False):
        return wide_convs._chunk_width(g, conv, binding, itemsize, lambda node: winograd)
    assert width(128 << 20, 4) == 1024  # 411 MB in 4 chunks of 103 (129 packed) MB
    assert width(1 << 31, 4) is None
    assert width(128 << 20, 2) == 2048  # float16
    g.constants["w"] = torch.zeros(1024, 1024, 3, 3)  # 37.7 MB: whole at 128 MiB unless routed to Winograd (151 MB)
    conv.args = (Ref("x"), Ref("w"), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    assert width(128 << 20, 4) is None
    assert width(128 << 20, 4, winograd=True) == 512


@pytest.mark.parametrize("seed", range(4))
def test_every_chunk_fits_the_gpu_packing(seed):
    """Whatever the conv, each chunk's weights as the GPU GEMMs pack them (C_out padded to 128, Winograd's 36
    matrices of C_out x C_in) fit the binding where a 128-channel block does: the fixed factors before let a
    176-channel Winograd chunk pad to 256 and pass it on the H100 (session 24), which lavapipe's packing hid."""
    rng = torch.Generator().manual_seed(seed)
    for _ in range(50):
        c_out, c_in = (int(v) for v in torch.randint(8, 1200, (2,), generator=rng))
        kernel = int(torch.randint(0, 3, (1,), generator=rng)) * 2 + 1
        itemsize = 2 if int(torch.randint(0, 2, (1,), generator=rng)) else 4
        binding = int(torch.randint(1 << 18, 1 << 24, (1,), generator=rng))
        conv = Node("c", aten.convolution.default, (Ref("x"), Ref("w"), None, [1, 1], [kernel // 2] * 2, [1, 1],
                                                    False, [0, 0], 1),
                    meta=torch.empty(1, c_out, 8, 8, device="meta"))
        g = Graph(["x"], {"w": torch.empty(c_out, c_in, kernel, kernel, device="meta")}, [conv], [Ref("c")])
        for winograd in (False, True):
            width = wide_convs._chunk_width(g, conv, binding, itemsize, lambda node, w=winograd: w)
            as_winograd = kernel == 3 and (winograd or width is not None)
            k = c_in * kernel * kernel
            if width is None:
                assert wide_convs.packed_bytes(k, c_out, itemsize) <= binding or \
                    wide_convs.packed_bytes(k, 128, itemsize, as_winograd) > binding
                continue
            if wide_convs.packed_bytes(k, 128, itemsize, as_winograd) <= binding:
                assert wide_convs.packed_bytes(k, width, itemsize, as_winograd) <= binding, (c_out, c_in, kernel)
