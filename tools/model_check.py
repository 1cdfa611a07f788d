"""Offline check of the routing model (calibration/model.py) on measurements already taken, no GPU needed.

Refits the model from a calibration file's raw grid measurements (the build stamp is not checked: any
calibration file of the format will do), prints its leave-one-out report over the grid, and, given the JSON
of `convroute bench --suite all --json`, each suite's total time under the model's choices over the
measured oracle, with the layers where the choice is not the fastest.
usage: python tools/model_check.py CALIBRATION.json [BENCH.json] [--layers]
"""

from __future__ import annotations

import argparse
import json

from convroute.calibration.model import CostModel, loo_report
from convroute.calibration.profile import Calibration
from convroute.params import params_from_dict


def suite_ratios(model: CostModel, bench: dict, layers: bool) -> None:
    for suite in bench["suites"]:
        chosen = best = 0.0
        misses = []
        for layer in suite["layers"]:
            times = layer["times_ms"]
            p = params_from_dict(layer["params"])
            predicted = {n: t for n in times if (t := model.predict_ms(p, n)) is not None}
            choice = min(predicted, key=predicted.get) if len(times) > 1 and predicted else min(times, key=times.get)
            fastest = min(times, key=times.get)
            chosen += layer["count"] * times[choice]
            best += layer["count"] * times[fastest]
            if choice != fastest:
                misses.append(f"    {layer['name']} x{layer['count']}: {choice} {1000 * times[choice]:.1f} us, "
                              f"{fastest} {1000 * times[fastest]:.1f} us (was {layer['choices'].get('calibrated')})")
        print(f"{suite['suite']:14s} model / oracle {chosen / best:.4f}   (bench's calibrated "
              f"{suite['vs_oracle'].get('calibrated', float('nan')):.4f})")
        if layers:
            print("\n".join(misses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration")
    parser.add_argument("bench", nargs="?")
    parser.add_argument("--layers", action="store_true", help="list the layers where the choice is not the fastest")
    args = parser.parse_args()
    with open(args.calibration) as f:
        cal = Calibration.from_json(json.load(f))
    loo = loo_report(cal.samples, cal.excluded)
    print(f"grid {len(cal.samples)} shapes, leave-one-out over {loo['shapes']}: fastest picked "
          f"{loo['accuracy']:.0%}, mean regret {loo['mean_regret']:.2%}, total {loo['total_regret']:.2%} of grid "
          f"time lost, worst {loo['worst_regret']:.0%} on {loo['worst_shape']}")
    if args.bench:
        with open(args.bench) as f:
            suite_ratios(CostModel.fit(cal.samples, cal.excluded), json.load(f), args.layers)


if __name__ == "__main__":
    main()
