"""Reports for people: aligned tables, latency percentiles, and the bench's table per layer, totals and plot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from convroute.params import ConvParams

if TYPE_CHECKING:
    from convroute.measure.bench import BenchReport

POLICY_MARKS = {"seed": "s", "calibrated": "c", "autotune": "a"}


def format_table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns aligned under a ruled head; the first `left` columns left-justified, the rest right-justified."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class Latency:
    """Median, 10th and 90th percentiles of repeated wall-clock times (ms), and how many runs."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, seconds) -> Latency:
        if len(seconds) == 0:
            raise ValueError("no times to summarise")
        p10, median, p90 = np.percentile(np.asarray(seconds, np.float64) * 1e3, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), len(seconds))

    def text(self) -> str:
        return f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}, {self.runs} runs)"

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "runs": self.runs}


def shape_text(p: ConvParams) -> str:
    kind = "T" if p.transposed else ""
    extra = ""
    if p.groups > 1:
        extra += " dw" if p.is_depthwise else f" g{p.groups}"
    if p.dilation != (1, 1):
        extra += f" d{p.dilation[0]}"
    k = f"{p.kh}" if p.kh == p.kw else f"{p.kh}x{p.kw}"
    s = f"{p.stride[0]}" if p.stride[0] == p.stride[1] else f"{p.stride[0]}x{p.stride[1]}"
    return f"{p.c_in}x{p.h}x{p.w}>{p.c_out} {kind}k{k}s{s}{extra}"


def table(report: BenchReport) -> str:
    """One row per layer: ms per algorithm (marks: s/c/a = seed/calibrated/autotune choice, * = fastest)."""
    algos = report.algorithms
    head = ["layer", "n", "shape"] + algos + [f"{p} regret" for p in report.policies]
    rows = []
    for r in report.layers:
        cells = [r.name[:24], str(r.count), shape_text(r.params)]
        for name in algos:
            if name in r.times_ms:
                marks = "".join(POLICY_MARKS.get(p, "?") for p in report.policies if r.choices.get(p) == name)
                cells.append(f"{r.times_ms[name]:.3f}{'*' if name == r.oracle else ''}{marks}")
            else:
                cells.append("WRONG" if name in r.failures else "-")
        cells += [f"{100 * r.regret(p):.0f}%" for p in report.policies]
        rows.append(cells)
    return format_table(head, rows, left=3)


def summary(report: BenchReport) -> str:
    totals = report.totals_ms()
    oracle = totals["oracle"]
    parts = []
    for key in report.policies + ["oracle"] + report.algorithms:
        value = totals.get(key)
        if value is None:
            parts.append(f"  {key:<12} n/a")
        else:
            parts.append(f"  {key:<12} {value:10.3f} ms   {value / oracle:5.3f} x oracle")
    device = report.device.get("name", "?")
    head = (f"{report.suite}, batch {report.batch}, {report.dtype}, on {device} ({report.timing}); totals weighted "
            f"by layer counts:")
    notes = [f"note: {n}" for n in report.notes]
    return "\n".join([head] + parts + notes)


def plot(report: BenchReport, path: str) -> None:
    """Per-layer time by algorithm (log scale), policy choices and the oracle marked; totals beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = report.algorithms
    n = len(report.layers)
    fig, (ax, ax_tot) = plt.subplots(1, 2, figsize=(max(10.0, 0.45 * n + 5), 6.5),
                                     gridspec_kw={"width_ratios": [max(n, 4), 3]})
    width = 0.8 / max(len(algos), 1)
    x = np.arange(n)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    marker = {"seed": ("v", "black"), "calibrated": ("*", "red"), "autotune": ("D", "purple")}
    for j, name in enumerate(algos):
        times = [r.times_ms.get(name, np.nan) for r in report.layers]
        ax.bar(x + (j - (len(algos) - 1) / 2) * width, times, width, label=name, color=colours[j % len(colours)])
    for i, r in enumerate(report.layers):
        for k, (policy, (m, c)) in enumerate(marker.items()):
            if policy in r.choices and r.choices[policy] in algos:
                j = algos.index(r.choices[policy])
                xpos = i + (j - (len(algos) - 1) / 2) * width
                ax.plot(xpos, r.policy_ms(policy) * 1.2 ** (k + 1), m, color=c, markersize=6,
                        label=f"{policy} choice" if i == 0 else None)
        j = algos.index(r.oracle)
        ax.plot(i + (j - (len(algos) - 1) / 2) * width, r.oracle_ms / 1.15, "^", color="green", markersize=5,
                label="fastest (oracle)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r.name} x{r.count}" if r.count > 1 else r.name for r in report.layers], rotation=70,
                  ha="right", fontsize=7)
    ax.set_ylabel("time per layer (ms, median)")
    ax.set_title(f"{report.suite}, batch {report.batch}, {report.dtype}: per-layer time by algorithm")
    ax.legend(fontsize=8, ncol=2)
    totals = {k: v for k, v in report.totals_ms().items() if v is not None}
    ax_tot.barh(list(totals), list(totals.values()),
                color=["tab:red" if k in marker else "tab:green" if k == "oracle" else "grey" for k in totals])
    for k, v in totals.items():
        ax_tot.text(v, k, f" {v:.1f} ({v / totals['oracle']:.2f}x)", va="center", fontsize=7)
    ax_tot.invert_yaxis()
    ax_tot.set_xlabel("total ms (weighted by counts)")
    ax_tot.set_title(report.device.get("name", "")[:40], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
