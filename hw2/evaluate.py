"""Bits per character of a CharLM checkpoint on any text:
`python -m hw2.evaluate ckpt=<ckpt> text=<file> [streams=1] [seq_len=256]`.

The text is read as validation reads a split (contiguous streams, hidden state carried), so
with the run's `data.eval_batch_size` and `data.seq_len` it gives the run's validation BPC."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from hw2.inference import evaluate, read_text  # after Hydra parsed the command line

    try:
        text = read_text(cfg.text, "text")
        bpc, count, unseen = evaluate(cfg.ckpt, text, cfg.streams, cfg.seq_len, cfg.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if unseen:
        shown = "".join(unseen[:40]).encode("unicode_escape").decode()
        print(f"warning: {len(unseen)} character(s) the checkpoint has never seen, scored as "
              f"<unk>: '{shown}'", file=sys.stderr)
    print(f"{cfg.text}: {bpc:.4f} bits per character over {count} characters")


if __name__ == "__main__":
    main()
