"""`bench --plot` figures lay out without overlaps: the legend clear of every bar, every text inside the figure,
the totals' values outside the bars' panel. Synthetic reports: no GPU work."""

from __future__ import annotations

import pytest

from convroute.bench.compare_layers import CompareReport, EngineResult, Measurement
from convroute.bench.suite import BenchReport, LayerResult
from convroute.params import make_params
from convroute.report.plots import bench_figure, compare_figure

pytest.importorskip("matplotlib")

TIMES = {"direct": 0.9, "im2col": 3.5, "implicit_gemm": 0.4, "winograd2": 2.0, "winograd4": 1.8}


def bench_report(layers: int) -> BenchReport:
    results = []
    for i in range(layers):
        p = make_params((1, 64, 56, 56), (64, 64, 3, 3) if i % 2 else (64, 64, 1, 1), padding=i % 2)
        times = {k: v * (1 + i / 3) for k, v in TIMES.items()} if i % 2 else {"pointwise": 0.3 + i, "direct": 5.0}
        best = min(times, key=times.get)
        results.append(LayerResult(f"layer{i}.0.conv{i % 2 + 1}_with_a_long_name", 1 + i % 3, p, times,
                                   choices={"seed": "direct", "calibrated": best}))
    return BenchReport("resnet-like", 1, {"name": "A Long GPU Name (driver 1.2.3, 256 bits)"}, "gpu timestamps",
                       ["seed", "calibrated"], results)


def compare_report(layers: int) -> CompareReport:
    def engine(name, scale, skip=()):
        return EngineResult(name, layers=[Measurement(ms=None if i in skip else scale * (1 + i), runs=3)
                                          for i in range(layers)])
    return CompareReport("resnet-like", 1, 5, 0.1, {"name": "GPU"}, [f"layer{i}.conv" for i in range(layers)],
                         [1] * layers, [make_params((1, 8, 8, 8), (8, 8, 3, 3))] * layers,
                         {"convroute-calibrated": engine("convroute-calibrated", 0.5),
                          "torch": engine("torch", 0.7), "ncnn-vk32": engine("ncnn-vk32", 1.3, skip={0})})


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def check_layout(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    bars = [patch.get_window_extent(renderer) for ax in fig.axes for patch in ax.patches]
    bars = [b for b in bars if b.width > 0 and b.height > 0]
    assert bars
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert [b for b in bars if overlaps(box, b)] == [], "the legend covers bars"
    boxes = [(f"axes {ax.get_title()!r} with its labels", ax.get_tightbbox(renderer)) for ax in fig.axes]
    boxes += [("the legend", legend.get_window_extent(renderer)) for legend in legends]
    for what, box in boxes:
        assert figure_box.x0 - 1 <= box.x0 and box.x1 <= figure_box.x1 + 1 and figure_box.y0 - 1 <= box.y0 \
            and box.y1 <= figure_box.y1 + 1, f"{what} runs off the figure"
    for ax in fig.axes:  # a value written over the bars' panel would cover them
        panel = ax.get_window_extent(renderer)
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert not overlaps(box, panel) or all(not overlaps(box, b) for b in bars), text.get_text()


@pytest.mark.parametrize("layers", [1, 30])
def test_bench_plot_has_no_overlaps(layers, tmp_path):
    import matplotlib.pyplot as plt

    fig = bench_figure(bench_report(layers))
    try:
        check_layout(fig)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("layers", [12])
def test_compare_plot_has_no_overlaps(layers):
    import matplotlib.pyplot as plt

    fig = compare_figure(compare_report(layers))
    try:
        check_layout(fig)
    finally:
        plt.close(fig)


def test_the_check_sees_a_legend_over_bars_and_text_off_the_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar([0, 1, 2], [1.0, 1.0, 1.0], label="bars")
    ax.legend(loc="center")
    try:
        with pytest.raises(AssertionError, match="legend covers"):
            check_layout(fig)
        ax.legend(loc="upper left", bbox_to_anchor=(0, 1.2))
        ax.text(2.4, 1.05, "a value label running off the right edge of the figure")
        with pytest.raises(AssertionError, match="runs off the figure"):
            check_layout(fig)
    finally:
        plt.close(fig)
