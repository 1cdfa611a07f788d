"""Every GEMM tile and K split on the GEMM-based algorithms of the shipped suites' layers, against the chosen one.

    python tools/gemm_tiles_bench.py [--suites resnet50,vgg16] [--batch 1] [--dtype float32|float16[+f16]]
                                     [--budget 0.05] [--extra] [--deep] [--slices] [--pointwise]
                                     [--json OUT]

Per distinct layer and algorithm (pointwise for 1x1, im2col and implicit_gemm for other dense convs) it builds
the kernel once per forced (tile, splits) plan, checks each against the float64 reference, times them all
interleaved (measure.timing), and prints the chosen plan's time over the best plan's. --extra adds tiles that are
not in gemm_tiles.TILES (the shapes the one-B-vec4-per-invocation rule allows), to see what the list misses;
--slices adds K-sliced workgroups (the chosen tile's, the 32x32 one's and SLICE_BASES'); --deep adds
32/64-sided tiles with K steps of 16-64 (several B loads per invocation).
For im2col it also prints the gather dispatch's share of the time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from convroute.bench.suites import load_suite
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS, gemm
from convroute.kernels.common import Precision, ceil_div
from convroute.kernels.gemm_tiles import SIZED, Tile
from convroute.measure.reference import TOLERANCES
from convroute.measure.timing import TimingSettings, time_candidates
from convroute.measure.workload import Workload


def generates(tile: Tile) -> bool:
    """Whether the generator accepts `tile`."""
    try:
        tile.check()
    except ValueError:
        return False
    return True


def extra_tiles() -> list[Tile]:
    """Every tile of 32-128 rows and columns, 4 or 8 per invocation each way, that the generator accepts."""
    out = []
    for bm in (32, 64, 128):
        for bn in (32, 64, 128):
            for tm in (4, 8):
                for tn in (4, 8):
                    threads = (bm // tm) * (bn // tn)
                    bk = 4 * threads // bn
                    if 64 <= threads <= 256 and bk in (4, 8, 16) and generates(Tile(bm, bn, bk, tm, tn)):
                        out.append(Tile(bm, bn, bk, tm, tn))
    return out


def deep_tiles() -> list[Tile]:
    """32- and 64-sided tiles with deep K steps (16-64), several B vec4s per invocation: fewer K steps for
    small, latency-bound layers."""
    out = []
    for bm in (32, 64):
        for bn in (32, 64):
            for tm, tn in ((4, 4),):
                for bk in (16, 32, 64):
                    tile = Tile(bm, bn, bk, tm, tn)
                    if 64 <= tile.threads <= 256 and tile.b_loads > tile.threads and generates(tile):
                        out.append(tile)
    return out


EXTRA = tuple(extra_tiles())
SLICE_BASES = (Tile(16, 16, 4, 4, 4), Tile(16, 32, 8, 4, 4), Tile(32, 16, 8, 4, 4))  # --slices: narrow slices
DEEP = tuple(deep_tiles())


def plans(kernel, cols: int, extra: bool, deep: bool = False,
          slices: bool = False) -> dict[str, tuple[Tile, int]]:
    g = kernel.gemm
    tiles = list(gemm.tiles_for(cols, g.gpu.profile, g.precision))
    more = (EXTRA if extra else ()) + (DEEP if deep else ())
    tiles += [t for t in more if t not in tiles and t.unfit(g.gpu.profile, g.precision) is None
              and g.k_pad % t.bk == 0]
    out = {"chosen": g.plan(cols)}
    busy = g.gpu.profile.busy_workgroups
    if slices:
        tile, splits = out["chosen"]
        for base in dict.fromkeys((tile.sliced(1), SIZED["small"], *SLICE_BASES)):
            for ks in (2, 3, 4, 6, 8, 12, 16, 24, 32):
                sliced = base.sliced(ks)
                if sliced.unfit(g.gpu.profile, g.precision) is not None or g.k_pad % base.bk:
                    continue
                out[f"{sliced}"] = (sliced, 1)
                if splits > ks:
                    out[f"{sliced} k/{ceil_div(splits, ks)}"] = (sliced, ceil_div(splits, ks))
    for t in tiles:
        out[f"{t}"] = (t, 1)
        groups = ceil_div(g.m, t.bm) * ceil_div(cols, t.bn)
        ktiles = g.k_pad // t.bk
        for splits in (2, 4, 8):
            if groups * splits <= 4 * busy and ktiles // splits >= gemm.MIN_KT_PER_SPLIT:
                out[f"{t} k/{splits}"] = (t, splits)
    return out


def applicable(p):
    if p.groups != 1 or p.transposed:
        return []
    return ["pointwise"] if (p.kh, p.kw) == (1, 1) else ["im2col", "implicit_gemm"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suites", default="resnet50,vgg16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--extra", action="store_true")
    ap.add_argument("--deep", action="store_true", help="add tiles with deep K steps (several B loads each)")
    ap.add_argument("--slices", action="store_true",
                    help="add the chosen tile and the small one with K slices (2-16), with and without K splits")
    ap.add_argument("--pointwise", action="store_true", help="1x1 layers only")
    ap.add_argument("--json")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many layer x algorithm rows")
    args = ap.parse_args()
    dtype, _, acc = args.dtype.partition("+")
    precision = Precision.parse(dtype, "float16" if acc == "f16" else None)
    gpu = get_gpu()
    print("device:", gpu.profile.name, "| busy workgroups", gpu.profile.busy_workgroups, "|", args.dtype)
    settings = TimingSettings(budget_s=args.budget, repeats=30)
    seen, report = set(), []
    total = {"chosen": 0.0, "best": 0.0}
    for suite_name in args.suites.split(","):
        for layer in load_suite(suite_name).layers:
            p = layer.params(args.batch)
            for algo in applicable(p):
                if args.pointwise and algo != "pointwise":
                    continue
                key = (p.describe(), algo)
                if key in seen or (args.limit and len(report) >= args.limit):
                    continue
                seen.add(key)
                t0 = time.perf_counter()
                work = Workload(gpu, p, precision=precision)
                cols = work.p.n * p.ho * p.wo
                base = work.kernel(ALGORITHMS[algo])
                if getattr(base, "cpu", None) or not hasattr(base, "gemm"):
                    continue  # CPU adapters' register tiles (set CONVROUTE_GEMM_STYLE=workgroup to sweep)
                candidates, errors = {}, {}
                for label, plan in plans(base, cols, args.extra, args.deep, args.slices).items():
                    k = work.kernel(ALGORITHMS[algo])
                    k.gemm.plan = lambda cols, plan=plan: plan
                    candidates[label] = k
                for label, k in candidates.items():
                    errors[label] = work.error(k)
                timings = work.time_all(candidates, settings)
                if algo == "im2col":
                    k = candidates["chosen"]
                    gather = {"gather": [[k.bind(x, y, work.p.n)[0]] for x, y in
                                         zip(work.x_bufs, work.y_bufs, strict=True)]}
                    gather_ms = time_candidates(gpu, gather, settings)["gather"].median_ms
                else:
                    gather_ms = None
                ms = {label: t.median_ms for label, t in timings.items()}
                best = min(ms, key=ms.get)
                bad = [label for label, e in errors.items() if not e < TOLERANCES[precision.dtype]]
                chosen_plan = candidates["chosen"].gemm.plan(cols)
                flops = work.p.flops
                row = dict(suite=suite_name, layer=layer.name, count=layer.count, params=p.describe(),
                           algorithm=algo, cols=cols, m=base.gemm.m, k=base.gemm.k, ms=ms, best=best,
                           chosen=f"{chosen_plan[0]} k/{chosen_plan[1]}", gather_ms=gather_ms, wrong=bad)
                report.append(row)
                total["chosen"] += layer.count * ms["chosen"]
                total["best"] += layer.count * ms[best]
                top = sorted(ms.items(), key=lambda kv: kv[1])[:3]
                gflops = f" {flops / ms[best] / 1e6:.0f} GFLOP/s" if flops else ""
                print(f"{suite_name} {layer.name} {p.describe()} {algo} M={base.gemm.m} K={base.gemm.k} "
                      f"cols={cols}: chosen {row['chosen']} {ms['chosen']:.4f} ms, best {best} {ms[best]:.4f} "
                      f"({ms['chosen'] / ms[best]:.2f}x){gflops}; top3 "
                      + ", ".join(f"{lbl} {v:.4f}" for lbl, v in top)
                      + (f"; gather {gather_ms:.4f}" if gather_ms else "")
                      + (f"; WRONG {bad}" if bad else "") + f" [{time.perf_counter() - t0:.1f}s]", flush=True)
                work.release()
    print(f"total (counts): chosen {total['chosen']:.3f} ms, best per layer {total['best']:.3f} ms "
          f"({total['chosen'] / max(total['best'], 1e-9):.3f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
