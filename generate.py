"""Sample from a trained CharLM: `python generate.py ckpt=<path> prime=ROMEO length=500`
(`prime_file=<text file>` primes with a file's text, `num_samples=3` draws several)."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from hw2.inference import generate_samples, read_text  # after Hydra parsed the command line

    try:
        prime = read_text(cfg.prime_file, "prime_file") if cfg.prime_file else str(cfg.prime)
        samples = generate_samples(cfg.ckpt, prime, cfg.length, cfg.temperature, cfg.top_k,
                                   cfg.seed, cfg.device, top_p=cfg.top_p,
                                   num_samples=cfg.num_samples)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} of {len(samples)}")
        print(text)


if __name__ == "__main__":
    main()
