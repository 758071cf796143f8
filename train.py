"""Train a task: `python train.py task=charlm|cnn [group=option] [key=value ...]`.

`python train.py --help` lists the config groups; `-m` sweeps (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hw2.train import run  # after Hydra parsed the command line: --help stays fast

    metrics = run(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
