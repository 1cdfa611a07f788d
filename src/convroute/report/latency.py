"""Percentiles of repeated wall-clock times."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
