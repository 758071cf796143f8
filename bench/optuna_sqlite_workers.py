"""Several processes on one SQLite study, the way hw2 sweeper workers use it (heartbeat on,
ask/tell, `fail_stale_trials` at every beat), with near-instant trials: the most contention a
SQLite file sees. Does every process finish its trials, are any lost or doubled, and does
"database is locked" appear?

    python bench/optuna_sqlite_workers.py [--procs 3] [--trials 40] [--trial-s 0.05]

(The same with real training: bench/optuna_workers.py --storage sqlite --kill none.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(url: str, n: int, trial_s: float, out: mp.Queue) -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    from hw2.utils.optuna_study import Heartbeat, open_storage, trial_id

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # "Heartbeat ... supposed to be used with Study.optimize"
    done, errors = 0, []
    try:
        storage = open_storage(url, heartbeat_interval=1, grace_period=5)
        study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
        with Heartbeat(study, storage, 1) as beat:
            for _ in range(n):
                try:
                    t = study.ask({"x": FloatDistribution(0, 1)})
                    beat.add(trial_id(storage, "s", t.number))
                    time.sleep(trial_s)
                    study.tell(t, t.params["x"] ** 2)
                    done += 1
                except Exception as e:  # count and go on: what a sweeper worker would hit
                    errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
    except Exception:
        errors.append(next((ln for ln in traceback.format_exc().splitlines()
                            if ln.startswith(("sqlalchemy.exc", "sqlite3."))),
                           traceback.format_exc().strip().splitlines()[-1]))
    out.put((done, errors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40, help="per process")
    ap.add_argument("--trial-s", type=float, default=0.05)
    args = ap.parse_args()
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='optuna-sqlite-')) / 'optuna.db'}"
    q: mp.Queue = mp.Queue()
    t0 = time.monotonic()
    procs = [mp.Process(target=worker, args=(url, args.trials, args.trial_s, q))
             for _ in range(args.procs)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    errors = [e for _, errs in results for e in errs]
    print(f"{args.procs} processes x {args.trials} trials on {url}: "
          f"{time.monotonic() - t0:.1f} s")
    print(f"told per process: {[d for d, _ in results]}; study: {len(trials)} trials, "
          f"{sum(t.state.name == 'COMPLETE' for t in trials)} COMPLETE, "
          f"{len({t.number for t in trials})} distinct numbers")
    locked = sum("database is locked" in e for e in errors)
    print(f"errors: {len(errors)} ({locked} 'database is locked')")
    for e in sorted(set(errors))[:5]:
        print("  ", e)


if __name__ == "__main__":
    main()
