"""Train a task: `python train.py task=charlm|cnn [group=option] [key=value ...]`.

`python train.py --help` lists the config groups; `-m` sweeps (see README)."""

import sys

import hydra
from omegaconf import DictConfig

SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from hw2.runs.checkpoints import CheckpointError  # after Hydra parsed the command line:
    from hw2.runs.lock import RunDirBusy
    from hw2.sweeps.job import run_job
    from hw2.train import run
    from hw2.utils.fileio import UnwritablePathError  # --help stays fast

    try:  # sweeps: skip finished jobs, resume interrupted ones, survive failures
        return run_job(cfg, run)
    except (CheckpointError, RunDirBusy, UnwritablePathError) as e:  # the message says it all
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        sys.exit(SIGTERM_EXIT)  # pre-empted: last.ckpt saved, run.json says interrupted


if __name__ == "__main__":
    main()
