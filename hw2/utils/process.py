"""Process checks shared by the run record, checkpoint clean-up and GPU slots."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_rank() -> int:
    """This process's global rank under DDP (Lightning's launcher, torchrun, srun); 0 alone.
    Ranks > 0 share rank 0's run directory: rank 0 writes its record and holds its lock."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "0") != "0":
            return int(os.environ[key])
    return 0
