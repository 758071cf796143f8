"""Several `python train.py -m hparams_search=...` workers on one Optuna study, as on several
machines: start them, find the trial one of them is running, kill it, and count who ran what.
Shared by tests/test_optuna_workers.py and bench/optuna_workers.py."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hw2.utils.optuna_study import retried_numbers, retry_of

ROOT = Path(__file__).resolve().parents[2]


def start_worker(args: list[str], seed: int, log: Path) -> subprocess.Popen:
    """One worker: its own sampler seed (else all would draw the same parameters); output to
    `log`."""
    out = log.open("w")
    return subprocess.Popen([sys.executable, "train.py", "-m", *args,
                             f"hydra.sweeper.sampler.seed={seed}"],
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)


def trials(url: str, study: str = "search") -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=url).get_trials()
    except KeyError:  # no worker has created the study yet
        return []


def worker_of(trial: FrozenTrial) -> int | None:
    """The process id of the worker that ran `trial` (its `worker` attr is host:pid; a sweeper
    before the heartbeat kept a `pid` attr)."""
    worker = trial.user_attrs.get("worker")
    return int(worker.rsplit(":", 1)[1]) if worker else trial.user_attrs.get("pid")


def rerun_of(trial: FrozenTrial) -> int | None:
    """The trial whose parameters `trial` runs again (Optuna's retry history; the sweeper
    before the heartbeat kept a `retry_of` attr)."""
    return retry_of(trial) if retry_of(trial) is not None else trial.user_attrs.get("retry_of")


def running_trial(url: str, pid: int, timeout: float, study: str = "search") -> int:
    """The number of a trial worker `pid` is running, once it runs one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in trials(url, study):
            if t.state == TrialState.RUNNING and worker_of(t) == pid:
                return t.number
        time.sleep(0.2)
    raise TimeoutError(f"worker {pid} ran no trial within {timeout} s")


def wait_retried(url: str, number: int, timeout: float, study: str = "search") -> float:
    """Seconds until trial `number` is FAIL and a retry of it is queued (or already running)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ts = trials(url, study)
        if ts[number].state == TrialState.FAIL and any(rerun_of(t) == number for t in ts):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(f"trial {number} was not failed and re-queued within {timeout} s")


def summary(ts: list[FrozenTrial]) -> str:
    """Per-worker trial counts and the retries, as printed by the test and the benchmark."""
    retried = retried_numbers(ts)
    counts = Counter(worker_of(t) for t in ts)
    lines = [f"worker pid {pid}: {n} trial(s) "
             f"({', '.join(f'#{t.number} {t.state.name}' for t in ts if worker_of(t) == pid)})"
             for pid, n in sorted(counts.items(), key=lambda kv: str(kv[0]))]
    lines += [f"trial #{t.number} re-ran the parameters of #{rerun_of(t)} (its worker died): "
              f"{t.state.name}" for t in ts if rerun_of(t) is not None]
    counted = [t for t in ts if t.number not in retried and t.state != TrialState.RUNNING]
    lines.append(f"{len(counted)} finished trial(s) counted, {len(retried)} retried")
    return "\n".join(lines)
