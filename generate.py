"""Sample from a trained CharLM: `python generate.py ckpt=<path> prime=ROMEO length=500`."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from hw2.inference import generate

    try:
        text = generate(cfg.ckpt, str(cfg.prime), cfg.length, cfg.temperature, cfg.top_k,
                        cfg.seed, cfg.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(text)


if __name__ == "__main__":
    main()
