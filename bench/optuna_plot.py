"""The report's search figure: hw2's `objective_vs_trial` against Optuna's
`plot_optimization_history` (matplotlib backend) on the same trials, side by side.

    python bench/optuna_plot.py [--trials 40] [--repeat 5] [--out /tmp/optuna-plots]

Both get the trials the report has (`optuna_study.json`: number, state, value); Optuna's needs a
study, built in memory from them. Prints the median seconds per figure (import excluded, PNG
written) and whether the pyplot style changed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hw2.report.figures import objective_vs_trial


def fake_trials(n: int) -> list[tuple[int, float | None, str]]:
    rng = random.Random(0)
    out: list[tuple[int, float | None, str]] = []
    for i in range(n):
        state = "FAIL" if i % 7 == 3 else "PRUNED" if i % 5 == 4 else "COMPLETE"
        out.append((i, None if state == "FAIL" else 2.0 + rng.random(), state))
    return out


def optuna_figure(trials: list[tuple[int, float | None, str]], path: Path) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    study = optuna.create_study(direction="minimize")
    study.add_trials([optuna.trial.create_trial(
        state=TrialState[s], value=v if s == "COMPLETE" else None,
        intermediate_values={0: v} if s == "PRUNED" and v is not None else None)
        for _, v, s in trials])
    ax = plot_optimization_history(study)
    ax.figure.savefig(path, dpi=90)
    plt.close(ax.figure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/optuna-plots"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
    trials = fake_trials(args.trials)
    import matplotlib
    style_before = matplotlib.rcParams["axes.facecolor"]
    times: dict[str, list[float]] = {"hw2 objective_vs_trial": [],
                                     "optuna plot_optimization_history": []}
    for _ in range(args.repeat):
        t = time.perf_counter()
        objective_vs_trial(trials, "minimize", "best/val/bpc", args.out / "hw2.png")
        times["hw2 objective_vs_trial"].append(time.perf_counter() - t)
        t = time.perf_counter()
        optuna_figure(trials, args.out / "optuna.png")
        times["optuna plot_optimization_history"].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:<36} {statistics.median(ts) * 1000:7.1f} ms (median of {args.repeat})")
    print(f"pyplot style after both: axes.facecolor {style_before!r} -> "
          f"{matplotlib.rcParams['axes.facecolor']!r} (changed for every later figure)"
          if matplotlib.rcParams["axes.facecolor"] != style_before else "pyplot style unchanged")
    print(f"figures: {args.out / 'hw2.png'}  {args.out / 'optuna.png'}")


if __name__ == "__main__":
    main()
