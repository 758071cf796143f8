"""Several Optuna workers on one study, one of them SIGKILLed in the middle of a trial: does the
study still reach exactly `n_trials` finished trials, and how long until the dead worker's trial
is failed and its parameters queued again?

    python bench/optuna_workers.py --storage postgres            # a throw-away local server
    python bench/optuna_workers.py --storage sqlite --kill none  # 3 processes on one SQLite file
    python bench/optuna_workers.py --root /tmp/old-checkout ...  # another version of the sweeper

Each worker is `python train.py -m hparams_search=charlm_optuna` with tiny CharLM trials on
`--text` and its own sampler seed (as on separate machines). Prints per-worker trial counts,
the retried trial, the seconds from SIGKILL to the re-queue (or that it did not happen while
the other workers ran), and how many "database is locked" errors the workers logged.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import optuna_workers as w  # noqa: E402
from tests.helpers.postgres import postgres_server  # noqa: E402

TINY = ["data=text_file", "data.corpus.test_fraction=0.1", "model.net.embedding_dim=4",
        "model.net.num_layers=1", "data.batch_size=4", "trainer.max_epochs=1",
        "++trainer.limit_train_batches=12", "++trainer.limit_val_batches=3",
        "trainer.val_check_interval=4", "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
        "model.net.hidden_size=choice(8,12,16)", "data.seq_len=choice(8,16)",
        "hydra.callbacks.sweep_report.samples=false"]


def run(url: str, out: Path, args: argparse.Namespace) -> None:
    common = ["hparams_search=charlm_optuna", *TINY, f"data.corpus.path={args.text}",
              f"paths.root_dir={out}", f"hydra.sweep.dir={out / 'search'}",
              f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={args.n_trials}",
              *args.extra]
    w.ROOT = args.root
    t0 = time.monotonic()
    procs = [w.start_worker(common, seed=100 + i, log=out / f"worker{i}.log")
             for i in range(args.workers)]
    try:
        if args.kill == "one":
            number = w.running_trial(url, procs[0].pid, timeout=600)
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].wait()
            print(f"SIGKILL worker pid {procs[0].pid} running trial #{number} "
                  f"at {time.monotonic() - t0:.0f} s", flush=True)
            try:
                took = w.wait_retried(url, number, timeout=args.requeue_timeout)
                print(f"trial #{number} failed and re-queued {took:.1f} s after the SIGKILL")
            except TimeoutError:
                alive = sum(p.poll() is None for p in procs)
                print(f"trial #{number} NOT failed/re-queued within {args.requeue_timeout:.0f} s "
                      f"after the SIGKILL ({alive} worker(s) still running)")
        codes = [p.wait(timeout=3600) for p in procs[1 if args.kill == "one" else 0:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"workers' exit codes {codes}, {time.monotonic() - t0:.0f} s in all")
    ts = w.trials(url)
    print(w.summary(ts))
    print("states:", {s: sum(t.state.name == s for t in ts) for s in
                      ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")})
    locked = sum(p.read_text(errors="replace").count("database is locked")
                 for p in out.glob("worker*.log"))
    print(f'"database is locked" in the workers\' logs: {locked} time(s); logs in {out}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--kill", choices=("one", "none"), default="one")
    ap.add_argument("--requeue-timeout", type=float, default=180)
    ap.add_argument("--text", type=Path, default=Path(os.environ.get(
        "HW2_DATA_DIR", "/work/shared/data")) / "tinyshakespeare.txt")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose train.py runs")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more overrides, e.g. hydra.sweeper.grace_period=20")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="optuna-workers-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{args.workers} workers, {args.storage}, n_trials={args.n_trials}, kill={args.kill}, "
          f"root={args.root}; load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.storage == "postgres":
        with postgres_server() as url:
            run(url, out, args)
    else:
        run(f"sqlite:///{out / 'optuna.db'}", out, args)


if __name__ == "__main__":
    main()
