"""Active sampling for `convroute calibrate`: after the base grid, the coverage pool's shapes (grid.coverage_pool)
are measured one at a time, the one the current model knows least first, until the budget ends.

A pool shape's score is how far it lies from every measured shape (calibration.coverage: the summed excess
over the axis tolerances) plus how close the model's two best predictions are (1 for a tie, 0 from a factor
SWAP_RATIO apart): a shape nothing like the measured ones, or one where the algorithms swap rank, is where a
measurement changes routing. The coverage part updates after every shape, the model every REFIT shapes.
"""

from __future__ import annotations

import math

from convroute.calibration.coverage import Coverage
from convroute.calibration.grid import measuring_order
from convroute.calibration.model import CostModel
from convroute.kernels import ALGORITHMS
from convroute.params import ConvParams

SWAP_RATIO = 1.3
REFIT = 10


def rank_swap(model: CostModel, p: ConvParams, excluded: dict[str, str]) -> float:
    """1 when the model predicts its two best algorithms for `p` equally fast, falling to 0 at SWAP_RATIO."""
    times = sorted(t for name, kernel in ALGORITHMS.items() if name not in excluded and kernel.unsupported(p) is None
                   and (t := model.predict_ms(p, name)) is not None)
    if len(times) < 2:
        return 0.0
    return max(0.0, 1.0 - math.log(times[1] / times[0]) / math.log(SWAP_RATIO))


class ActiveSampler:
    """Picks pool shapes in order of score; `samples` (the calibration's, growing) is read at every pick."""

    def __init__(self, pool: list[ConvParams], samples: list, excluded: dict[str, str], profile, dtype: str):
        self.pool = measuring_order(pool)  # ties go to a fixed shuffle, not to the pool's first family
        self.samples, self.excluded, self.profile, self.dtype = samples, excluded, profile, dtype
        self.swap: dict[ConvParams, float] = {}
        self.picked = 0

    def __len__(self) -> int:
        return len(self.pool)

    def pick(self) -> ConvParams:
        if self.picked % REFIT == 0:
            self.refit()
        coverage = Coverage([s.params for s in self.samples if s.times_ms])
        scores = [coverage.verdict(p).distance + self.swap.get(p, 1.0) for p in self.pool]
        self.picked += 1
        return self.pool.pop(max(range(len(scores)), key=scores.__getitem__))

    def refit(self) -> None:
        model = CostModel.fit(self.samples, self.excluded, self.profile, self.dtype)
        self.swap = {p: rank_swap(model, p, self.excluded) for p in self.pool}
