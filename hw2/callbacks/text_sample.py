"""A generated sample as TensorBoard text after each validation, to read progress, not numbers."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from hw2.callbacks.histograms import tensorboard


class TextSample(pl.Callback):
    def __init__(self, prime: str = "ROMEO:", length: int = 200, temperature: float = 0.8,
                 seed: int = 0) -> None:
        self.prime, self.length, self.temperature, self.seed = prime, length, temperature, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return  # diverged: nothing to read (the run stops at its next training step)
        vocab = pl_module.vocab
        prime = "".join(c for c in self.prime if c in vocab.index) or vocab.chars[0]
        text = pl_module.sample(prime, self.length, self.temperature,
                                generator=torch.Generator().manual_seed(self.seed))
        # TensorBoard renders text as Markdown: keep line breaks
        writer.add_text("samples/generated", "    " + text.replace("\n", "\n    "),
                        global_step=trainer.global_step)
