"""A run's own record, `<run dir>/run.json`: what ran, where, when, and how it ended.

Sweeps, reports and tests read it rather than log text: a re-run skips finished jobs, the
report lists failed and interrupted runs, the GPU-pool test checks which job held which device.
A run killed outright (SIGKILL, power loss) stays `running` on disk; `status_of` tells it apart
from a live one by its process id.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hw2.utils.fileio import atomic_write_json
from hw2.utils.process import pid_alive
from hw2.utils.ranks import global_rank, node

RECORD_NAME = "run.json"
STATUSES = ("running", "finished", "pruned", "failed", "interrupted")
DONE = ("finished", "pruned")  # a normal end: a re-run skips the job (pruned: by Optuna's pruner)


def read_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The record of `run_dir`, or None when it has none (or it is unreadable)."""
    path = Path(run_dir) / RECORD_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def job_overrides() -> list[str] | None:
    """The current Hydra job's overrides (command line + sweep values); None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        return None


def status_of(record: Mapping[str, Any] | None) -> str:
    """finished / pruned / failed / interrupted / running; a `running` record whose process is gone
    (on this host) counts as interrupted."""
    if not record:
        return "interrupted"
    status = record.get("status", "interrupted")
    if status == "running" and record.get("host") == socket.gethostname():
        pid = record.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid):
            return "interrupted"
    return status


class RunRecord:
    """The record being written for the current process's run."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / RECORD_NAME
        old = read_record(run_dir) or {}
        self.previous = old  # the earlier attempt's record ({} for a new run)
        self.data: dict[str, Any] = {
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": node(),  # the host, or host/ray:<node id> for a job on a Ray node
            "started": time.time(),
            "ended": None,
            "attempts": int(old.get("attempts", 0)) + 1,
            "first_started": old.get("first_started", old.get("started", time.time())),
        }
        self.write()

    @property
    def writer(self) -> bool:
        """DDP ranks > 0 share the run directory: rank 0 speaks for the run."""
        return global_rank() == 0

    def write(self) -> None:
        if self.writer:
            atomic_write_json(self.path, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def end(self, status: str, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        self.update(status=status, ended=time.time(), **fields)


def last_error_line(exc: BaseException) -> str:
    """The last line of the innermost cause: Hydra's InstantiationException wraps the real error
    and ends in `full_key: model`."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = traceback.format_exception_only(type(exc), exc)
    return (lines[-1] if lines else repr(exc)).strip().splitlines()[-1]


@contextmanager
def recorded_run(run_dir: str | os.PathLike) -> Iterator[RunRecord]:
    """Write `run.json` as `running` now and `finished`/`failed`/`interrupted` at the end. A
    run recorded done (`record.end("finished")` once its results are in) stays done: what
    stops it after that (a kill while the report or a sample prints) does not undo its
    results."""
    record = RunRecord(run_dir)
    try:
        yield record
    except BaseException as e:
        if record.data.get("status") not in DONE:
            _record_stop(record, e)
        raise
    else:
        if record.data["status"] == "running":
            record.end("finished")


def _record_stop(record: RunRecord, e: BaseException) -> None:
    """How the run stopped: interrupted (a re-run resumes it) or failed, with why."""
    if isinstance(e, KeyboardInterrupt):
        record.end("interrupted", error="KeyboardInterrupt")
    elif type(e).__name__ == "SIGTERMException":
        # Lightning turns SIGTERM (SLURM's pre-emption, `timeout`) into this exception, of the
        # `pytorch_lightning` or the `lightning` package: the run was stopped, not broken.
        # Matched by name, so that reading records never imports Lightning.
        record.end("interrupted", error="SIGTERM (pre-empted)")
    elif isinstance(e, SystemExit):  # Lightning turns Ctrl-C into sys.exit(1) after saving
        ctrl_c = isinstance(e.__context__, KeyboardInterrupt)
        record.end("interrupted" if ctrl_c else "failed",
                   error="KeyboardInterrupt" if ctrl_c else f"exit {e.code}")
    else:
        record.end("failed", error=last_error_line(e))
