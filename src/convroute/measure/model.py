"""The routing model `calibrated` uses: one cost model per algorithm, fitted on the calibration grid.

Each algorithm's log run time is predicted in two steps:
1. a ridge regression on log-scale shape features (work, memory traffic, channels per group, output pixels,
   kernel area, stride, groups, dilation) and a few squares/products of them: the global trend, which
   extrapolates smoothly to shapes larger or smaller than the grid's;
2. plus the distance-weighted mean residual of that regression at the k nearest grid shapes (in the
   standardised feature space): the local corrections the global trend misses (a GEMM tile that wastes
   work below 64 channels, a kernel that is memory-bound at small sizes, ...).
The algorithm with the smallest predicted time wins. Fitting takes milliseconds, so it is redone whenever a
profile is loaded; `loo_report` measures how well the choice generalises (leave-one-out over the grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convroute.params import ConvParams

FEATURES = ("macs", "input", "output", "weight", "cin_g", "cout_g", "pixels", "kernel", "stride", "groups",
            "dilation", "batch")
SQUARES = ("macs", "cin_g", "cout_g", "pixels")
PRODUCTS = (("cin_g", "pixels"), ("cout_g", "pixels"), ("cin_g", "cout_g"), ("kernel", "cin_g"))
RIDGE = 1e-2
NEIGHBOURS = 4


def base_features(p: ConvParams) -> dict[str, float]:
    """log2 of the quantities run time depends on."""
    cin_g, cout_g = p.c_in // p.groups, p.c_out // p.groups
    pixels = p.ho * p.wo
    macs = p.flops / 2
    values = {"macs": macs, "input": p.n * p.c_in * p.h * p.w, "output": p.n * p.c_out * pixels,
              "weight": cin_g * p.c_out * p.kh * p.kw, "cin_g": cin_g, "cout_g": cout_g, "pixels": pixels,
              "kernel": p.kh * p.kw, "stride": p.stride[0] * p.stride[1], "groups": p.groups,
              "dilation": p.dilation[0] * p.dilation[1], "batch": p.n}
    return {k: math.log2(v) for k, v in values.items()}


def feature_vector(p: ConvParams) -> np.ndarray:
    f = base_features(p)
    row = [f[k] for k in FEATURES]
    row += [f[k] ** 2 for k in SQUARES]
    row += [f[a] * f[b] for a, b in PRODUCTS]
    return np.array(row, np.float64)


@dataclass
class AlgorithmModel:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    points: np.ndarray  # standardised features of the grid shapes
    residuals: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, log_t: np.ndarray) -> AlgorithmModel:
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        a = np.hstack([np.ones((len(z), 1)), z])
        penalty = RIDGE * len(z) * np.eye(a.shape[1])
        penalty[0, 0] = 0.0
        coef = np.linalg.solve(a.T @ a + penalty, a.T @ log_t)
        return cls(mean, scale, coef, z, log_t - a @ coef)

    def predict_log(self, x: np.ndarray) -> float:
        z = (x - self.mean) / self.scale
        trend = float(self.coef[0] + z @ self.coef[1:])
        if len(self.points) == 0:
            return trend
        dist = np.sqrt(((self.points - z) ** 2).sum(axis=1))
        near = np.argsort(dist)[:NEIGHBOURS]
        weights = 1.0 / (dist[near] + 0.25)
        return trend + float(weights @ self.residuals[near] / weights.sum())


@dataclass
class CostModel:
    models: dict[str, AlgorithmModel]
    counts: dict[str, int]

    @classmethod
    def fit(cls, samples, excluded: dict[str, str] | None = None) -> CostModel:
        excluded = excluded or {}
        rows: dict[str, list] = {}
        for s in samples:
            x = feature_vector(s.params)
            for name, t in s.times_ms.items():
                if name not in excluded and t > 0:
                    rows.setdefault(name, []).append((x, math.log(t)))
        models, counts = {}, {}
        for name, data in rows.items():
            if len(data) < 3:
                continue
            x = np.array([r[0] for r in data])
            y = np.array([r[1] for r in data])
            models[name], counts[name] = AlgorithmModel.fit(x, y), len(data)
        return cls(models, counts)

    def predict_ms(self, p: ConvParams, name: str) -> float | None:
        """Predicted time of `name` on `p`, None when the algorithm was not calibrated."""
        model = self.models.get(name)
        return None if model is None else math.exp(model.predict_log(feature_vector(p)))


def loo_report(samples, excluded: dict[str, str] | None = None) -> dict:
    """Leave-one-out over the grid: for each shape with 2+ measured algorithms, fit without it, choose, and
    compare with the measured fastest. Returns accuracy, mean and worst regret, and time-weighted regret."""
    hits, regrets, chosen_total, best_total = 0, [], 0.0, 0.0
    comparable = [i for i, s in enumerate(samples) if len(s.times_ms) >= 2]
    for i in comparable:
        model = CostModel.fit(samples[:i] + samples[i + 1:], excluded)
        times = samples[i].times_ms
        predicted = {n: model.predict_ms(samples[i].params, n) for n in times}
        predicted = {n: t for n, t in predicted.items() if t is not None}
        if not predicted:
            continue
        choice = min(predicted, key=predicted.get)
        best = min(times.values())
        hits += times[choice] == best
        regrets.append(times[choice] / best - 1)
        chosen_total += times[choice]
        best_total += best
    n = len(regrets)
    return {"shapes": n, "accuracy": hits / n if n else 1.0, "mean_regret": float(np.mean(regrets)) if n else 0.0,
            "worst_regret": float(max(regrets)) if n else 0.0,
            "total_regret": chosen_total / best_total - 1 if best_total else 0.0}
