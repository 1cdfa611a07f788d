"""Values planned inside another value's buffer (frontend/views.py): producers writing into their slice of a
channel concat, and channel slices read in place. Each small model matches the float64 torch reference in fp32
and fp16 with both switches on and off, with buffers poisoned with NaN before each run (conftest), and takes
fewer dispatches with them on where they apply; where they would be wrong (batch > 1, a producer read twice, a
concat along H, offsets off the device's binding alignment, outputs) nothing changes. Sibling convs stay apart
here (CONVROUTE_MERGE_SIBLINGS=0): merged, the mixed convs would leave no concat to plan (tests/test_siblings.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("small_direct_tile")]


@pytest.fixture(autouse=True)
def siblings_apart(monkeypatch):
    monkeypatch.setenv("CONVROUTE_MERGE_SIBLINGS", "0")


class Inception(nn.Module):
    """Three branches concatenated along channels: 1x1, 3x3 (relu), and a max pool + 1x1; then a 1x1 reading
    the concat."""

    def __init__(self, c=4, widths=(8, 8, 16)):
        super().__init__()
        self.a = nn.Conv2d(c, widths[0], 1)
        self.b = nn.Conv2d(c, widths[1], 3, padding=1)
        self.c = nn.Conv2d(c, widths[2], 1)
        self.head = nn.Conv2d(sum(widths), 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), F.relu(self.b(x)), self.c(F.max_pool2d(x, 3, 1, 1))], 1)
        return self.head(y)


class Mixed(nn.Module):
    """MixNet's mixed conv: split the channels, a depthwise conv of its own kernel size per part, concat."""

    def __init__(self, parts=(8, 8, 16)):
        super().__init__()
        self.parts = list(parts)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 2 * i + 3, padding=i + 1, groups=c) for i, c in enumerate(parts))
        self.head = nn.Conv2d(sum(parts), 4, 1)

    def forward(self, x):
        pieces = torch.split(x, self.parts, 1)
        return self.head(torch.cat([conv(p) for conv, p in zip(self.convs, pieces, strict=True)], 1))


class Nested(nn.Module):
    """A concat inside a concat, and a chunk whose halves are read by convs (ShuffleNet- / CSPNet-like)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 16, 1)

    def forward(self, x):
        left, right = x.chunk(2, 1)
        inner = torch.cat([self.a(x), self.b(right)], 1)
        return torch.cat([inner, self.c(left)], 1)


class SharedBranch(nn.Module):
    """The first branch is read by the concat and by an add: it must keep a buffer of its own."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 1)

    def forward(self, x):
        a = self.a(x)
        return torch.cat([a, self.b(x)], 1) + torch.cat([a, a], 1)


class ReadsItsNeighbour(nn.Module):
    """b is computed from a, and both are concatenated: a in the concat's buffer would have b's kernel read and
    write that buffer at once, so a keeps its own and is copied (b still goes in place)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        a = self.a(x)
        return torch.cat([a, self.b(a)], 1)


class Dense(nn.Module):
    """DenseNet's block: each layer reads the concat of every feature so far (batch norm, relu, conv) and adds
    one; the block's output is the concat of them all."""

    def __init__(self, c=8, growth=8, layers=4):
        super().__init__()
        self.a = nn.Conv2d(4, c, 1)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c + i * growth) for i in range(layers))
        self.convs = nn.ModuleList(nn.Conv2d(c + i * growth, growth, 3, padding=1) for i in range(layers))

    def forward(self, x):
        features = [self.a(x)]
        for bn, conv in zip(self.bns, self.convs, strict=True):
            features.append(conv(F.relu(bn(torch.cat(features, 1)))))
        return torch.cat(features, 1)


class DenseThenGhost(nn.Module):
    """A dense block, then a GhostNet-like concat whose second half is computed from its first: the ghost concat
    keeps one copy while the dense block's concats still share one buffer."""

    def __init__(self):
        super().__init__()
        self.dense, self.ghost = Dense(), ReadsItsNeighbour()
        self.ghost.a = nn.Conv2d(40, 8, 1)
        self.a = self.dense.a

    def forward(self, x):
        return self.ghost(self.dense(x))


class AlongHeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 2)


def run(model, x, dtype, views: bool, monkeypatch):
    """(output, dispatches, program) with both switches set to `views`."""
    for name in ("CONVROUTE_CONCAT_SLABS", "CONVROUTE_SLICE_VIEWS"):
        monkeypatch.setenv(name, "1" if views else "0")
    program = convroute.compile(model, (x,), dtype=dtype)
    return program(x), program.summary().dispatches, program


def assert_no_kernel_reads_what_it_writes(plan):
    """WebGPU refuses a buffer bound both read-only and writable in one dispatch; views must never ask for it."""
    def buffer(name):
        b = plan.buffer(name)
        return getattr(b, "buffer", b)
    for step in plan.gpu_steps:
        assert all(buffer(n) is not buffer(step.node.name) for n in step.op.inputs if n not in plan.within
                   or step.node.op != "cat"), step.node.name


def channels(model) -> int:
    return sum(model.parts) if hasattr(model, "parts") else model.a.in_channels


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("make,saved", [(Inception, 3), (Mixed, 6), (Nested, 6), (Dense, 1 + 2 + 3 + 4 + 5),
                                        (DenseThenGhost, 15 + 1)])
def test_views_match_torch_with_fewer_dispatches(make, saved, dtype, monkeypatch):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(1, channels(model), 16, 16)
    ref = reference(model, x)
    fused, fused_count, program = run(model, x, dtype, True, monkeypatch)
    plain, plain_count, _ = run(model, x, dtype, False, monkeypatch)
    assert rel_error(fused, ref) < TOLERANCES[dtype]
    assert rel_error(plain, ref) < TOLERANCES[dtype]
    assert plain_count - fused_count == saved, (plain_count, fused_count)


@pytest.mark.parametrize("make,batch", [(Inception, 2), (Mixed, 2), (SharedBranch, 1), (ReadsItsNeighbour, 1),
                                        (AlongHeight, 1), (Dense, 2)])
def test_views_not_taken_where_wrong(make, batch, monkeypatch):
    """Batch 2 (a channel slice is one span per image) and a concat along H keep their copies; a producer with
    another reader never goes into the concat."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(batch, channels(model), 16, 16)
    ref = reference(model, x)
    fused, fused_count, program = run(model, x, "float32", True, monkeypatch)
    _, plain_count, _ = run(model, x, "float32", False, monkeypatch)
    assert rel_error(fused, ref) < TOLERANCES["float32"]
    assert_no_kernel_reads_what_it_writes(program.plan)
    if make is SharedBranch:
        assert plain_count - fused_count == 2  # a and b written into the first concat, which copies nothing
    elif make is ReadsItsNeighbour:
        assert plain_count - fused_count == 1
    else:
        assert fused_count == plain_count
        assert not program.plan.within


def test_misaligned_slices_keep_their_copies(monkeypatch):
    """3x3 maps of 3, 5 and 16 channels: the second branch would start 108 bytes in, off any binding
    alignment, so it keeps its copy; the others (at 0 and, where the device allows, 288 bytes) need none."""
    torch.manual_seed(0)
    model = Inception(widths=(3, 5, 16)).eval()
    x = torch.randn(1, 4, 3, 3)
    ref = reference(model, x)
    fused, fused_count, program = run(model, x, "float32", True, monkeypatch)
    assert rel_error(fused, ref) < TOLERANCES["float32"]
    align = int(program.gpu.device.limits["min-storage-buffer-offset-alignment"])
    assert all(offset % align == 0 for _, offset in program.plan.within.values())
    assert 108 not in {offset for _, offset in program.plan.within.values()}
    assert program.plan.within  # the first branch, at offset 0
    assert any(s.node.op == "cat" and 0 < len(s.dispatches) < 3 for s in program.plan.gpu_steps)


def test_odd_length_float16_views_are_bound_a_word_long(monkeypatch):
    """In f16, the first split and the first concat slab of 3 channels of 5x5 (75 elements, 150 bytes, at offset 0)
    are read and written in place, bound as 152 bytes: no kernel touches the two past the end (poisoned buffers
    and the reference would show it)."""
    torch.manual_seed(0)
    model = Mixed(parts=(3, 5, 8)).eval()
    x = torch.randn(1, 16, 5, 5)
    fused, _, program = run(model, x, "float16", True, monkeypatch)
    assert rel_error(fused, reference(model, x)) < TOLERANCES["float16"]
    plan = program.plan
    odd = [name for name in plan.within if plan.metas[name].numel() % 2]
    ops = {n.name: n.op for n in plan.graph.nodes}
    assert sorted(ops[name] for name in odd) == ["convolution", "slice.Tensor"], [(n, ops[n]) for n in odd]
    assert all(plan.buffer(name).size == 2 * plan.metas[name].numel() + 2 for name in odd)
    assert_no_kernel_reads_what_it_writes(plan)


class MixedBatchNorm(Mixed):
    """MixNet's block: the mixed conv's concat, then batch norm and an activation (`first_act`: the first part's
    conv has an activation of its own, so nothing may fold)."""

    def __init__(self, first_act=False):
        super().__init__()
        self.bn, self.first_act = nn.BatchNorm2d(sum(self.parts)), first_act
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        pieces = [conv(p) for conv, p in zip(self.convs, torch.split(x, self.parts, 1), strict=True)]
        if self.first_act:
            pieces[0] = F.relu(pieces[0])
        return self.head(F.silu(self.bn(torch.cat(pieces, 1))))


class TwoBatchNormsAfterConcat(MixedBatchNorm):
    """The concat's batch norm is read by a second batch norm and by a conv: the first folds into the mixed convs,
    the second may not (it would scale what the conv reads too)."""

    def __init__(self):
        super().__init__()
        self.bn2 = nn.BatchNorm2d(sum(self.parts))
        with torch.no_grad():
            self.bn2.running_mean.uniform_(-1, 1)
            self.bn2.running_var.uniform_(0.5, 2)
        self.other = nn.Conv2d(sum(self.parts), sum(self.parts), 1)

    def forward(self, x):
        pieces = [conv(p) for conv, p in zip(self.convs, torch.split(x, self.parts, 1), strict=True)]
        b = self.bn(torch.cat(pieces, 1))
        return self.head(self.bn2(b) + self.other(b))


def test_a_second_batch_norm_after_a_concat_stays_apart_when_the_first_has_other_readers(monkeypatch):
    torch.manual_seed(0)
    model = TwoBatchNormsAfterConcat().eval()
    x = torch.randn(1, channels(model), 8, 8)
    monkeypatch.setenv("CONVROUTE_CONCAT_BN", "1")
    monkeypatch.setenv("CONVROUTE_SUMMED_CONVS", "0")  # else bn2 + other(b) is one conv (test_summed_convs)
    out, _, program = run(model, x, "float32", True, monkeypatch)
    assert rel_error(out, reference(model, x)) < TOLERANCES["float32"]
    assert program.summary().gpu_ops["batch_norm_eval"] == 1, program.summary().gpu_ops


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("first_act", [False, True])
def test_batch_norm_after_concat_folds_into_the_convs(batch, first_act, dtype, monkeypatch):
    torch.manual_seed(0)
    model = MixedBatchNorm(first_act).eval()
    x = torch.randn(batch, channels(model), 8, 8)
    ref = reference(model, x)
    counts = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("CONVROUTE_CONCAT_BN", flag)
        out, counts[flag], program = run(model, x, dtype, True, monkeypatch)
        assert rel_error(out, ref) < TOLERANCES[dtype]
        ops = program.summary().gpu_ops
        assert ("batch_norm_eval" in ops) == (flag == "0" or first_act), ops
    assert counts["0"] - counts["1"] == (0 if first_act else 1)
