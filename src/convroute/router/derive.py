"""Fit a derived rule (router/rule.py) on calibration grids: the heuristic ET-VK PR #20059 tuned by hand,
learned from measurements.

Each calibration sample gives, per candidate leaf (an algorithm, or two tried in order), the time the conv
would take if that leaf chose it: the measured time of the leaf's first algorithm that runs there, or where
none runs (or none was measured: wrong, too large) the time of seed's route, where the `derived` policy
falls back.

The fitter searches every tree of depth <= 3 over candidate thresholds (exhaustively: each subtree is the
best for its part of the samples) and minimises the time lost to the per-shape best plus `min_gain` per
condition. Each device weighs the same: its losses are divided by its oracle total (objective "time") or
its sample count (objective "log": log of the slowdown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convroute.device.profile import FAMILIES, DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.params import ConvParams, params_key
from convroute.router.exclusions import applicable, avoid_blocked
from convroute.router.rule import NUMERIC, Node, Rule, features
from convroute.router.seed import im2col_candidate, seed_route

OBJECTIVES = ("time", "log")
MAX_THRESHOLDS = 12  # candidate cuts per numeric feature (quantiles of the samples beyond that)


def profile_from_record(record: dict) -> DeviceProfile:
    """The profile a calibration or bench file was measured on, from its `device` record."""
    family = str(record.get("family", "unknown"))
    return DeviceProfile(family if family in FAMILIES else "unknown", str(record.get("name", "")),
                         str(record.get("driver", "")), int(record.get("vendor_id", 0)),
                         str(record.get("backend", "")), str(record.get("adapter_type", "")))


def shape_key(p: ConvParams) -> str:
    """params_key without the batch: a grid shape at any batch is the same layer."""
    return params_key(p.with_batch(1))


@dataclass
class FitData:
    feats: list[dict]
    loss: np.ndarray  # samples x leaves, normalised (see module doc)
    costs: np.ndarray  # samples x leaves, ms
    best: np.ndarray  # samples, ms
    device: np.ndarray  # sample -> device index
    algorithms: list[str]  # the candidate leaves: "a" or "a,b"
    keys: set[str]


def measured_costs(p: ConvParams, times: dict[str, float], profile: DeviceProfile,
                   candidates: list[str], fallback) -> list[float] | None:
    """Per candidate leaf ("a" or "a,b": a where it runs, else b), the time routing would get if the leaf
    chose it: fallback(p, profile, blocked) names the algorithm taken where none of the leaf's can run or was
    measured. None when nothing was measured."""
    if not times:
        return None
    blocked = {n: "not measured" for n in applicable(p) if n not in times}
    try:
        instead = fallback(p, profile, blocked)
    except RuntimeError:
        return None
    runs = [n for n in times if ALGORITHMS[n].unsupported(p) is None]
    return [times[next((n for n in label.split(",") if n in runs), instead)] for label in candidates]


def seed_instead(p, profile, blocked) -> str:
    return avoid_blocked(p, *seed_route(p, profile), blocked)[0]


def fit_data(calibrations, objective: str = "time", im2col_only: bool = False) -> FitData:
    """The samples a tree is fitted on: every non-transposed shape (the chooser), or only ET-VK's im2col
    candidates with leaves direct/im2col (the im2col rule)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    algorithms = ["direct", "im2col"] if im2col_only else chooser_leaves()
    feats, costs, device, keys = [], [], [], set()
    for index, cal in enumerate(calibrations):
        profile = profile_from_record(cal.device)
        for sample in cal.samples:
            p = sample.params
            if p.transposed or (im2col_only and not im2col_candidate(p)):
                continue
            fallback = other_of_two if im2col_only else seed_instead
            row = measured_costs(p, sample.times_ms, profile, algorithms, fallback)
            if row is None:
                continue
            feats.append(features(p, profile.family))
            costs.append(row)
            device.append(index)
            keys.add(shape_key(p))
    if not feats:
        raise ValueError("the calibrations hold no usable measurement for this rule")
    costs_a, device_a = np.array(costs), np.array(device)
    best = costs_a.min(axis=1)
    loss = np.empty_like(costs_a)
    for d in np.unique(device_a):
        rows = device_a == d
        if objective == "time":
            loss[rows] = (costs_a[rows] - best[rows, None]) / best[rows].sum()
        else:
            loss[rows] = np.log(costs_a[rows] / best[rows, None]) / rows.sum()
    return FitData(feats, loss, costs_a, best, device_a, algorithms, keys)


def chooser_leaves() -> list[str]:
    """Every algorithm alone, then every ordered pair (the first where it can run, else the second): singles
    first, so a pair wins only where it saves time."""
    names = [n for n in ALGORITHMS if n != "transposed"]
    return names + [f"{a},{b}" for a in names for b in names if a != b]


def other_of_two(p, profile, blocked) -> str:
    """Where direct or im2col was not measured, routing takes the other (avoid_blocked's order)."""
    return next(n for n in ("direct", "im2col") if n not in blocked)


def nice_threshold(lo: float, hi: float) -> int:
    """A cut between two neighbouring values: the power of two in (lo, hi] nearest their geometric mean, else hi."""
    mid = (math.log2(lo) + math.log2(hi)) / 2 if lo > 0 else math.log2(hi)
    powers = [1 << e for e in range(0, 63) if lo < (1 << e) <= hi]
    return min(powers, key=lambda v: abs(math.log2(v) - mid)) if powers else int(hi)


def candidate_splits(feats: list[dict]) -> list[tuple[str, int | str]]:
    splits: list[tuple[str, int | str]] = []
    for name in NUMERIC:
        values = np.sort(np.array([f[name] for f in feats]))
        cuts = sorted({(values[i - 1], values[i]) for i in range(1, len(values)) if values[i - 1] != values[i]})
        if len(cuts) > MAX_THRESHOLDS:
            positions = np.linspace(0, len(values), MAX_THRESHOLDS + 2)[1:-1].astype(int)
            cuts = sorted({(values[i - 1], values[i]) for i in positions if values[i - 1] != values[i]})
        splits += [(name, nice_threshold(float(lo), float(hi))) for lo, hi in cuts]
    families = sorted({f["family"] for f in feats})
    if len(families) > 1:
        splits += [("family", fam) for fam in families]
    return splits


class TreeSearch:
    """Exhaustive search of trees of depth <= `depth`: minimises sum of leaf losses + min_gain * conditions,
    with at least `min_leaf` samples per leaf."""

    def __init__(self, data: FitData, depth: int = 3, min_leaf: int = 3, min_gain: float = 0.002):
        self.loss, self.algorithms = data.loss, data.algorithms
        self.depth, self.min_leaf, self.min_gain = depth, min_leaf, min_gain
        splits = candidate_splits(data.feats)
        masks = np.array([[Node(None, f, t).holds(x) for x in data.feats] for f, t in splits], dtype=bool)
        masks = masks.reshape(len(splits), len(data.feats))
        _, first = np.unique(np.packbits(masks, axis=1), axis=0, return_index=True)
        keep = sorted(first)  # one split per partition of the samples, the first in feature order
        self.splits = [splits[i] for i in keep]
        self.masks = masks[keep]

    def fit(self) -> Node:
        return self._search(np.ones(self.loss.shape[0], dtype=bool), self.depth)[1]

    def _leaf(self, sums: np.ndarray) -> tuple[float, Node]:
        best = int(np.argmin(sums))
        return float(sums[best]), Node(leaf=self.algorithms[best])

    def _search(self, mask: np.ndarray, depth: int) -> tuple[float, Node]:
        total = mask.astype(float) @ self.loss
        best = self._leaf(total)
        count = int(mask.sum())
        if depth == 0 or count < 2 * self.min_leaf or best[0] <= 0:
            return best
        left_masks = self.masks & mask
        left_counts = left_masks.sum(axis=1)
        valid = (left_counts >= self.min_leaf) & (count - left_counts >= self.min_leaf)
        if depth == 1:
            left = left_masks.astype(float) @ self.loss
            right = total - left
            scores = np.where(valid, left.min(axis=1) + right.min(axis=1) + self.min_gain, np.inf)
            s = int(np.argmin(scores))
            if scores[s] < best[0] - 1e-12:
                name, threshold = self.splits[s]
                return float(scores[s]), Node(None, name, threshold, self._leaf(left[s])[1], self._leaf(right[s])[1])
            return best
        for s in np.flatnonzero(valid):
            yes = self._search(left_masks[s], depth - 1)
            no = self._search(mask & ~self.masks[s], depth - 1)
            score = yes[0] + no[0] + self.min_gain
            if score < best[0] - 1e-12:
                name, threshold = self.splits[s]
                best = (score, Node(None, name, threshold, yes[1], no[1]))
        return best


def derive_rule(calibrations, *, depth: int = 3, min_leaf: int = 3, min_gain: float = 0.002,
                objective: str = "time") -> tuple[Rule, set[str]]:
    """(the rule, the shape keys it was fitted on)."""
    chooser_data = fit_data(calibrations, objective)
    im2col_data = fit_data(calibrations, objective, im2col_only=True)
    chooser = TreeSearch(chooser_data, depth, min_leaf, min_gain).fit()
    im2col = TreeSearch(im2col_data, depth, min_leaf, min_gain).fit()
    info = {"fitted_on": [{"device": cal.device_key, "family": cal.device.get("family", "unknown"),
                           "grid": cal.grid, "shapes": len(cal.samples), "dtype": cal.dtype} for cal in calibrations],
            "objective": objective, "depth": depth, "min_leaf": min_leaf, "min_gain": min_gain}
    return Rule(chooser, im2col, info), chooser_data.keys | im2col_data.keys
