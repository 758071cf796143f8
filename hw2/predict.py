"""Classify photos with a trained FoodCNN checkpoint:
`python -m hw2.predict ckpt=<ckpt> images=<files or folder> [top_k=3]`.

The network, the class names and the evaluation preprocessing come from the checkpoint
(`hw2.inference.predict`)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    images = cfg.images
    images = OmegaConf.to_container(images) if OmegaConf.is_list(images) else str(images)
    from hw2.inference import predict  # after Hydra parsed the command line: --help stays fast

    failed = 0
    try:
        for path, result in predict(cfg.ckpt, images, cfg.top_k, cfg.batch_size, cfg.device,
                                    cfg.eval_resize):  # a list arrives as a ListConfig: fine
            if isinstance(result, str):
                failed += 1
                print(f"error: {result}", file=sys.stderr)
            else:
                print(f"{path}: " + ", ".join(f"{n} {p:.3f}" for n, p in result), flush=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
