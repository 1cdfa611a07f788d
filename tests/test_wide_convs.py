"""Convs whose weights pass the device's largest storage binding run on the GPU as output-channel chunks that a
concat joins (frontend/wide_convs.py), checked against torch in float64 with the binding limit lowered so that
small convs stand in for timm VGG's 411 MB head."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.frontend import wide_convs  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import randomize_batch_norms, reference, rel_error  # noqa: E402

pytestmark = pytest.mark.gpu

BINDING = "max-storage-buffer-binding-size"


class WideHead(nn.Module):
    """A small stem, then two wide convs: a 5x5 stride-2 head with a folded batch norm and a 3x3 stride-1 conv
    (Winograd's weights are 4x the raw ones, so it splits sooner)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.head, self.bn = nn.Conv2d(16, 200, 5, stride=2, bias=False), nn.BatchNorm2d(200)
        self.mix = nn.Conv2d(200, 24, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.bn(self.head(F.relu(self.stem(x)))))
        return self.mix(y) + 1.0


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


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 2])
def test_convs_past_one_binding_run_as_output_chunks(dtype, batch, monkeypatch):
    itemsize = 2 if dtype == "float16" else 4
    # head: 200 x 16 x 5 x 5 weights, 1.25x packed: 2000 bytes a channel in fp32 -> 2 chunks (104 + 96);
    # mix: 24 x 200 x 3 x 3, 4x packed: 28800 bytes a channel -> 3 chunks of 8
    limit = 240_000 * itemsize // 4
    program, error = compiled(dtype, batch, limit, monkeypatch)
    assert error < TOLERANCES[dtype]
    s = program.summary()
    assert not s.cpu_ops, s
    rows = program.convs()
    head = [r for r in rows if any("the weights pass one storage binding" in n for n in r["fused"])]
    assert len(head) == 2 + 3, [r["name"] for r in rows]
    assert s.gpu_ops["convolution"] == 1 + 2 + 3
    joins = [step for step in program.plan.steps if step.node.op == "cat"] + \
        [node for node in program.plan.aliases if node.op == "cat"]
    assert len(joins) == 2


def test_convs_that_fit_stay_whole(monkeypatch):
    program, error = compiled("float32", 1, None, monkeypatch)
    assert error < TOLERANCES["float32"]
    assert program.summary().gpu_ops["convolution"] == 3
    assert not any(step.node.op == "cat" for step in program.plan.steps)


def test_chunk_widths():
    """The fewest equal chunks, multiples of CHANNEL_STEP, each within the binding."""
    from convroute.frontend.graph import Graph, Node, Ref, aten
    weight = torch.zeros(4096, 512, 7, 7)
    conv = Node("fc1", aten.convolution.default, (Ref("x"), Ref("w"), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
                meta=torch.empty(1, 4096, 1, 1, device="meta"))
    g = Graph(["x"], {"w": weight}, [conv], [Ref("fc1")])
    assert wide_convs._chunk_width(g, conv, 128 << 20, 4) == 1024  # 411 MB in 4 chunks of 103 (129 packed) MB
    assert wide_convs._chunk_width(g, conv, 1 << 31, 4) is None
    assert wide_convs._chunk_width(g, conv, 128 << 20, 2) == 2048  # float16
