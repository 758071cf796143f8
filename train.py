"""Train a task: `python train.py task=charlm|cnn [group=option] [key=value ...]`.

`python train.py --help` lists the config groups; `-m` sweeps (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # after Hydra parsed the command line: --help stays fast
    from hw2.sweep import run_job
    from hw2.train import run

    return run_job(cfg, run)  # sweeps: skip finished, resume interrupted, survive failures


if __name__ == "__main__":
    main()
