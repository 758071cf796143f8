"""Which DDP process this is, read from what its launcher put in the environment, before
torch.distributed is up: Lightning's own launcher (LOCAL_RANK), torchrun (RANK, LOCAL_RANK,
WORLD_SIZE, TORCHELASTIC_RUN_ID) or srun (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS)."""

from __future__ import annotations

import os
import socket
import sys


def global_rank() -> int:
    """This process's rank among all processes of the run (0 outside DDP)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "0") != "0":
            return int(os.environ[key])
    return 0


def local_rank() -> int:
    """This process's rank on its node (0 outside DDP)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


def external_launcher() -> str | None:
    """"torchrun" or "srun" when that launcher started this process as one of several ranks
    (every rank then runs the whole entry point, Hydra included); None otherwise (a single
    process, or Lightning's own launcher, which starts ranks > 0 itself)."""
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    if "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "srun"
    return None


def launch_id() -> str | None:
    """An id that every rank of one torchrun/srun launch shares: torchrun's --rdzv-id (None
    when left at its default "none"), srun's job and step id."""
    launcher = external_launcher()
    if launcher == "torchrun":
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        return None if run_id in ("", "none") else f"torchrun-{run_id}"
    if launcher == "srun":
        return f"slurm-{os.environ.get('SLURM_JOB_ID', 'job')}.{os.environ['SLURM_STEP_ID']}"
    return None


def node() -> str:
    """The machine this process runs on, as run.json records it: the host name, and inside a
    Ray worker also its Ray node id (several Ray nodes may share one host)."""
    name = socket.gethostname()
    ray = sys.modules.get("ray")  # only when this process runs under Ray: no import here
    if ray is not None and ray.is_initialized():
        return f"{name}/ray:{ray.get_runtime_context().get_node_id()}"
    return name
