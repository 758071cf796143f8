"""Wall time of a small real Optuna search with and without a pruner, to the same best value.

    python bench/optuna_pruning.py [--n-trials 16] [--pruner median] [-- more overrides]
    python bench/optuna_pruning.py --n-trials 24 --hidden 128,256 --train-batches 300 --val-every 50

Two CharLM searches on tiny Shakespeare (`$HW2_DATA_DIR/tinyshakespeare.txt`), the same TPE
seed and search space, run at the same time with one thread each (same machine load for both):
one without a pruner, one with `hydra/sweeper/pruner=<--pruner>`. Prints, side by side: the
wall time, trials completed / pruned, training steps run, the best value, and the seconds from
the search's start until its best-so-far first reached the worse of the two final bests (the
value both reach).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw2.runs.record import read_record  # noqa: E402

SEARCH = ["hparams_search=charlm_optuna", "data=text_file", "model.net.num_layers=1",
          "model.net.embedding_dim=16", "data.batch_size=32", "trainer.max_epochs=1",
          "++trainer.limit_val_batches=5", "trainer.num_sanity_val_steps=0",
          "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
          "callbacks.param_histograms=null", "callbacks.text_sample=null",
          "model.optimizer.lr=tag(log,interval(1e-4,3e-2))", "data.seq_len=choice(32,64)",
          "model.net.dropout=interval(0,0.3)",
          "hydra.sweeper.sampler.n_startup_trials=4",
          "hydra.callbacks.sweep_report.samples=false"]


def arm(out: Path, name: str, extra: list[str], args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "train.py", "-m", *SEARCH,
           f"data.corpus.path={args.text}", f"paths.root_dir={out / name}",
           f"hydra.sweep.dir={out / name / 'search'}", f"hydra.sweeper.n_trials={args.n_trials}",
           f"model.net.hidden_size=choice({args.hidden})",
           f"++trainer.limit_train_batches={args.train_batches}",
           f"trainer.val_check_interval={args.val_every}", *extra, *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per arm: neither slows the other
    return subprocess.Popen(cmd, cwd=ROOT, stdout=(out / f"{name}.log").open("w"),
                            stderr=subprocess.STDOUT, env=env)


def study_of(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name="search",
                             storage=f"sqlite:///{out / name / 'search' / 'optuna.db'}")


def time_to(study: optuna.Study, target: float) -> float | None:
    """Seconds from the first trial's start until a completed trial's value <= target."""
    ts = study.get_trials()
    t0 = min(t.datetime_start for t in ts if t.datetime_start)
    hits = [t.datetime_complete for t in ts
            if t.state == TrialState.COMPLETE and t.value is not None and t.value <= target]
    return (min(hits) - t0).total_seconds() if hits else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trials", type=int, default=16)
    ap.add_argument("--pruner", default="median")
    ap.add_argument("--hidden", default="32,64", help="hidden sizes searched")
    ap.add_argument("--train-batches", type=int, default=80, help="training steps per trial")
    ap.add_argument("--val-every", type=int, default=16, help="steps between validations")
    ap.add_argument("--text", type=Path, default=Path(os.environ.get(
        "HW2_DATA_DIR", "/work/shared/data")) / "tinyshakespeare.txt")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more overrides for both arms")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="optuna-pruning-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    t0 = time.monotonic()
    arms = {"no pruner": arm(out, "plain", [], args),
            f"{args.pruner} pruner": arm(out, "pruned", [f"hydra/sweeper/pruner={args.pruner}",
                                                         "hydra.sweeper.pruner.n_startup_trials=4"]
                                         if args.pruner == "median" else
                                         [f"hydra/sweeper/pruner={args.pruner}"], args)}
    walls: dict[str, float] = {}
    while len(walls) < len(arms):  # each arm's own wall time, whichever ends first
        for name, p in arms.items():
            if name not in walls and p.poll() is not None:
                walls[name] = time.monotonic() - t0
        time.sleep(0.5)
    print(f"load average at end: {os.getloadavg()}")
    studies = {name: study_of(out, d) for name, d in zip(arms, ("plain", "pruned"), strict=True)}
    best = {name: s.best_value for name, s in studies.items()}
    target = max(best.values())
    print(f"\n{'':<24}" + "".join(f"{n:>18}" for n in studies))
    rows = {
        "wall (s)": {n: f"{walls[n]:.0f}" for n in studies},
        "complete / pruned": {n: f"{sum(t.state == TrialState.COMPLETE for t in s.trials)} / "
                              f"{sum(t.state == TrialState.PRUNED for t in s.trials)}"
                              for n, s in studies.items()},
        "training steps": {n: str(sum(int((read_record(out / d / 'search' / str(t.number)) or {})
                                          .get("metrics", {}).get("trainer/global_step", 0))
                                      for t in s.trials))
                           for (n, s), d in zip(studies.items(), ("plain", "pruned"),
                                                strict=True)},
        "best val bpc": {n: f"{b:.4f}" for n, b in best.items()},
        f"s to bpc <= {target:.4f}": {n: f"{time_to(s, target) or float('nan'):.0f}"
                                      for n, s in studies.items()},
    }
    for label, cells in rows.items():
        print(f"{label:<24}" + "".join(f"{cells[n]:>18}" for n in studies))
    print(f"\nlogs and studies in {out}")


if __name__ == "__main__":
    main()
