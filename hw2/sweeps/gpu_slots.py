"""One GPU per sweep job on a machine: each job locks a free device of a pool for its lifetime.

Hydra's joblib launcher runs `n_jobs` jobs at once in worker processes that it reuses, so a
job cannot know its GPU from its number; a lock file per device (released by the kernel when
its holder ends, SIGKILL included) hands out the devices without any shared state in memory.

The job then trains in a fresh child process that sees only its device
(`CUDA_VISIBLE_DEVICES=<id>`): CUDA cannot be re-pointed inside a worker that the launcher
reuses, and a job killed outright (SIGKILL, out of memory) ends only its child, so the worker
frees the device, marks the job's record and goes on with the rest of the sweep (a killed loky
worker would abort the whole sweep). The pool comes from the `gpu_pool` key or
`CUDA_VISIBLE_DEVICES`, not only from `torch.cuda.device_count()`, so it can be tested without
CUDA.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hw2.runs.lock import inheritable
from hw2.runs.record import RECORD_NAME, read_record
from hw2.utils.compat import set_hydra_config_plain
from hw2.utils.fileio import atomic_write_json

log = logging.getLogger(__name__)


def gpu_pool(pool: int | str | Sequence[Any] | None = None) -> list[str]:
    """The device ids a sweep may hand out: `pool` (a count, "0,1" or a list), else
    `CUDA_VISIBLE_DEVICES`, else every CUDA device of the machine."""
    if pool is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            pool = visible
        else:
            import torch

            pool = torch.cuda.device_count()
    if isinstance(pool, bool):
        raise ValueError(f"gpu_pool={pool!r}: give a count, a list of device ids or null")
    if isinstance(pool, int):
        return [str(i) for i in range(pool)]
    if isinstance(pool, str):
        pool = [p for p in pool.split(",") if p.strip()]
    ids = [str(p).strip() for p in pool]
    if len(set(ids)) != len(ids):
        raise ValueError(f"gpu_pool={ids} names a device twice")
    return ids


def _try_lock(path: Path) -> IO | None:
    handle = open(path, "a+")  # noqa: SIM115 - the handle is the lock, kept open
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextmanager
def claim_gpu(lock_dir: str | os.PathLike, n_gpus: int, poll_s: float = 5.0,
              names: Sequence[str] | None = None) -> Iterator[int]:
    """Yield the index of a GPU no other job holds, waiting until one is free. Lock files
    are named by `names[i]` (the physical device id) when given, so sweeps with different
    pools on one machine still never share a device."""
    if n_gpus < 1:
        raise ValueError("spread_gpus=true needs at least one visible GPU: set gpu_pool (e.g. "
                         "gpu_pool=[0,1]) or CUDA_VISIBLE_DEVICES, or drop launcher=local_gpus")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(n_gpus):
            name = names[index] if names is not None else str(index)
            handle = _try_lock(lock_dir / f"gpu{name}.lock")
            if handle is not None:
                try:
                    yield index
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
        time.sleep(poll_s)


def _job_in_slot() -> None:
    """Child process (`python -c`, stdin = the pickled job): restore Hydra's job context and
    train. A plain child, not multiprocessing's spawn: inside a loky worker spawn would ask
    for the 'loky' start method, which the child cannot find."""
    cfg, hydra_cfg, callbacks = pickle.load(sys.stdin.buffer)
    if hydra_cfg is not None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log

        set_hydra_config_plain(hydra_cfg)
        configure_log(HydraConfig.get().job_logging, HydraConfig.get().verbose)
    from hw2.train import run

    run(OmegaConf.create(cfg), callbacks)


def _hydra_config() -> dict | None:
    """Hydra's config of this job (choices, job logging) as plain data, to pickle."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return OmegaConf.to_container(HydraConfig.get(), resolve=True, throw_on_missing=False)


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def run_in_gpu_slot(cfg: DictConfig, callbacks: Sequence = (),
                    poll_s: float = 1.0) -> dict[str, float]:
    """Lock a free device of the pool, train the job in a child process that sees only it,
    free the device when the child ends however it ends; returns the job's final metrics."""
    pool = gpu_pool(cfg.get("gpu_pool"))
    lock_dir = cfg.get("gpu_lock_dir") or Path(cfg.paths.log_dir) / ".gpu_locks"
    out = Path(cfg.paths.output_dir)
    job_cfg = cfg.copy()
    with open_dict(job_cfg):
        job_cfg.spread_gpus = False
    container = OmegaConf.to_container(job_cfg, resolve=True, throw_on_missing=False)
    hydra_cfg = _hydra_config()
    with claim_gpu(lock_dir, len(pool), poll_s=poll_s, names=pool) as index:
        device = pool[index]
        log.info("sweep job %s on GPU %s", out, device)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device,  # before anything touches CUDA
               # the child imports this very copy of hw2, wherever the worker's cwd is
               "PYTHONPATH": os.pathsep.join(filter(None, (
                   str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))))}
        fds, lock_env = inheritable(out)  # the child trains under this job's run-dir lock
        started = time.time()
        child = subprocess.Popen(
            [sys.executable, "-c", "from hw2.sweeps.gpu_slots import _job_in_slot; _job_in_slot()"],
            stdin=subprocess.PIPE, env={**env, **lock_env}, pass_fds=fds)
        assert child.stdin is not None
        with child.stdin:
            child.stdin.write(pickle.dumps((container, hydra_cfg, tuple(callbacks))))
        code = child.wait()
    record = read_record(out) or {"pid": child.pid, "started": started}
    if code != 0:
        reason = _exit_reason(code)
        if record.get("status") in (None, "running"):  # killed before it could say so
            record.update(status="interrupted" if code < 0 else "failed",
                          ended=time.time(), error=reason, gpu=device)
            atomic_write_json(out / RECORD_NAME, record)
        raise RuntimeError(f"sweep job {out} on GPU {device} ended: {reason} "
                           f"(its log: {out}/train.log)")
    return dict(record.get("metrics") or {})
