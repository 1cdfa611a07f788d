"""Plots (matplotlib, the [report] extra) of a bench report (`bench --plot`) and of a comparison with peer
engines (`bench --compare --plot`): per-layer bars per algorithm or engine on a log scale, totals beside.

Nothing overlaps: the legend sits above the axes (constrained layout keeps it out of them), and each total's
value is written in its tick label, outside the bars' axes."""

from __future__ import annotations

import numpy as np

POLICY_MARKERS = {"seed": ("v", "black"), "calibrated": ("*", "red"), "autotune": ("D", "purple")}
SIDE_INCHES = 3.2  # the totals panel


def plot_bench(report, path: str) -> None:
    _save(bench_figure(report), path)


def plot_compare(report, path: str) -> None:
    _save(compare_figure(report), path)


def bench_figure(report):
    """bench.suite.BenchReport: per-layer time by algorithm, policy choices and the oracle marked; totals beside."""
    algos, layers = report.algorithms, report.layers
    fig, ax, ax_tot, offset = _layer_bars({name: [r.times_ms.get(name, np.nan) for r in layers] for name in algos},
                                          [(r.name, r.count) for r in layers], 0.45)
    for i, r in enumerate(layers):
        for k, (policy, (m, c)) in enumerate(POLICY_MARKERS.items()):
            if policy in r.choices and r.choices[policy] in algos:
                ax.plot(i + offset(algos.index(r.choices[policy])), r.policy_ms(policy) * 1.2 ** (k + 1), m,
                        color=c, markersize=6, label=f"{policy} choice" if i == 0 else None)
        ax.plot(i + offset(algos.index(r.oracle)), r.oracle_ms / 1.15, "^", color="green", markersize=5,
                label="fastest (oracle)" if i == 0 else None)
    ax.set_ylabel("time per layer (ms, median)")
    ax.set_title(f"{report.suite}, batch {report.batch}, {report.dtype}: per-layer time by algorithm", fontsize=10)
    totals = {k: v for k, v in report.totals_ms().items() if v is not None}
    oracle = totals["oracle"]
    ax_tot.barh(range(len(totals)), list(totals.values()),
                color=["tab:red" if k in report.policies else "tab:green" if k == "oracle" else "grey" for k in totals])
    ax_tot.set_yticks(range(len(totals)), [f"{k}\n{v:.3g} ms, {v / oracle:.2f}x" for k, v in totals.items()],
                      fontsize=7)
    ax_tot.set_xlabel("total ms, weighted by counts\n(an algorithm's: the fastest path\nwhere it cannot run)",
                      fontsize=8)
    _finish(fig, ax, ax_tot, report.device)
    return fig


def compare_figure(report):
    """bench.compare_layers.CompareReport: per-layer bars per engine, and convroute / peer ratios beside."""
    engines = report.convroute + report.peers
    series = {name: [np.nan if m.ms is None else m.ms for m in report.engines[name].layers] for name in engines}
    fig, ax, ax_ratio, _ = _layer_bars(series, list(zip(report.names, report.counts, strict=True)), 0.5)
    ax.set_ylabel(f"ms per layer (chain of {report.chain}, transfers included)")
    ax.set_title(f"{report.suite}, batch {report.batch}: convroute {report.dtype} vs other engines", fontsize=10)
    ratios = report.ratios()
    values = [r["ratio"] for r in ratios]
    ax_ratio.barh(range(len(ratios)), values, color=["tab:green" if v <= 1 else "tab:red" for v in values])
    ax_ratio.axvline(1.0, color="black", linewidth=0.8)
    ax_ratio.set_xscale("log")
    labels = []
    for r in ratios:
        subset = "all" if r["subset"] == "all" else f"{len(r['subset'])}/{len(report.names)} layers"
        labels.append(f"{r['convroute']} / {r['peer']}\n{r['ratio']:.2f}x ({subset})")
    ax_ratio.set_yticks(range(len(ratios)), labels, fontsize=7)
    ax_ratio.set_xlabel("total time ratio (weighted by counts)")
    _finish(fig, ax, ax_ratio, report.device)
    return fig


def _layer_bars(series: dict[str, list[float]], layers: list[tuple[str, int]], inch_per_layer: float):
    """A figure of grouped bars (one group per layer, one bar per series, log scale) and a side panel;
    returns (figure, bars axes, side axes, offset(j) = x offset of series j within a group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(layers)
    bars_inches = max(6.0, inch_per_layer * n)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(bars_inches + SIDE_INCHES + 1.5, 7.0), layout="constrained",
                                   gridspec_kw={"width_ratios": [bars_inches, SIDE_INCHES]})
    width = 0.8 / max(len(series), 1)

    def offset(j: int) -> float:
        return (j - (len(series) - 1) / 2) * width

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = np.arange(n)
    for j, (name, values) in enumerate(series.items()):
        ax.bar(x + offset(j), values, width, label=name, color=colours[j % len(colours)])
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{name} x{count}" if count > 1 else name for name, count in layers], rotation=70, ha="right",
                  rotation_mode="anchor", fontsize=7)
    return fig, ax, side, offset


def _finish(fig, ax, side, device: dict) -> None:
    """The legend above both panels, the device's name over the side panel, the side panel's first row on top."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    side.invert_yaxis()
    side.set_title(device.get("name", "")[:40], fontsize=8)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_zoo(report, path: str) -> None:
    """bench.zoo.ZooReport: convroute / each peer per model (horizontal bars, log scale, 1 marked; whiskers from
    convroute's p10 / the peer's p90 to its p90 / the peer's p10), models in the summary's order, the geometric
    mean per peer in the legend; the legend beside the axes, values inside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report.ranked()
    peers = report.peers
    fig, ax = plt.subplots(figsize=(9.0, 1.6 + 0.28 * len(rows) * max(1, len(peers))))
    height = 0.8 / max(len(peers), 1)
    y = np.arange(len(rows))
    values = []
    for j, peer in enumerate(peers):
        ratios = np.array([np.nan if r.ratio(peer) is None else r.ratio(peer) for r in rows])
        mean, count = report.geomean(peer)
        label = f"/ {peer}" + (f" (geometric mean {mean:.2f} over {count})" if mean else "")
        offset = (j - (len(peers) - 1) / 2) * height
        ax.barh(y + offset, ratios, height, label=label)
        spreads = [r.ratio_spread(peer) for r in rows]
        ends = _spread_whiskers(ax, spreads, ratios, y + offset)
        for i, v in enumerate(ratios):
            if np.isfinite(v):
                ax.text(ends[i], i + offset, f" {v:.2f}", va="center", fontsize=6)
        values += [e for e in ends if np.isfinite(e)] + [spread[0] for spread in spreads if spread is not None]
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if values:
        ax.set_xlim(min(min(values), 1.0) / 1.3, max(max(values), 1.0) * 1.6)  # room for the values' labels
    ax.set_yticks(y, [r.name + (" (CPU ops)" if r.cpu_ops else "") + (" FAILED" if r.error else "") for r in rows],
                  fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    ax.set_xlabel("convroute median / peer median (below 1: convroute faster); whiskers: the rounds' p10-p90 spread")
    device = report.device.get("name", "?")
    ax.set_title(f"convroute zoo: {len(rows)} models, batch {report.batch}, {report.dtype}, policy {report.policy}"
                 f"\n{device[:60]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, not over, the bars
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _spread_whiskers(ax, spreads: list, ratios, y) -> list[float]:
    """Whiskers over the bars where a (low, high) spread is known; each bar's right end (whisker or bar)."""
    shown = [i for i, spread in enumerate(spreads) if spread is not None and np.isfinite(ratios[i])]
    if shown:
        low = [ratios[i] - spreads[i][0] for i in shown]
        high = [spreads[i][1] - ratios[i] for i in shown]
        ax.errorbar(ratios[shown], y[shown], xerr=[low, high], fmt="none", ecolor="black", elinewidth=0.6,
                    capsize=1.5)
    return [max(ratios[i], spreads[i][1]) if i in shown else ratios[i] for i in range(len(ratios))]
