"""Character-level language model: trains a character network (`hw2.models.char_rnn`) on
cross-entropy and measures it in bits per character."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from hw2.data.vocab import Vocab
from hw2.models.base import TaskModule, WeightedMean
from hw2.models.char_rnn import CharRNN, Hidden, detach, sample_text, to_device
from hw2.models.nets import NetSpec, build_net, net_config

__all__ = ["CharLM", "CharRNN"]  # CharRNN here too: checkpoints name it hw2.models.charlm.CharRNN

# the CharRNN keys that shape its weights (a fine-tuned run takes them from the checkpoint)
ARCHITECTURE = ("_target_", "cell", "embedding_dim", "hidden_size", "num_layers", "tie_weights",
                "head_all_layers")
# CharRNN weights with one row per vocabulary entry
VOCAB_ROWS = ("embedding.weight", "head.weight", "head.bias")
LN2 = math.log(2)


class CharLM(TaskModule):
    """Trains a character network (`model.net`, by default `CharRNN`) with cross-entropy;
    reports loss in nats and bits per character. The network is given as the classifier's is:
    a Hydra partial (or its config) completed with the vocabulary size; the checkpoint keeps
    its config and the vocabulary, so `generate.py` needs nothing else."""

    def __init__(
        self,
        vocab: dict,
        net: NetSpec,
        carry_hidden: bool = True,
        l2: float = 0.0,
        skip_nonfinite: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler, l2=l2,
                         skip_nonfinite=skip_nonfinite)
        net = net_config(net)  # plain data in the checkpoint (save_hyperparameters reads it)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.vocab = Vocab.from_state_dict(vocab)
        self.carry_hidden = carry_hidden
        self.net = build_net(net, vocab_size=len(self.vocab))
        self.state: dict[str, Hidden | None] = {}
        # mean NLL in nats and in bits, weighted by characters, so BPC is exact over a split;
        # logged as metric objects (Lightning computes and resets them at epoch end). The
        # training ones are saved in checkpoints: a run resumed mid-epoch ends the epoch with
        # the same mean as one that never stopped.
        for stage in ("train", "val", "test"):
            for unit in ("loss", "bpc"):
                metric = WeightedMean()  # no per-step NaN-check sync
                if stage == "train":
                    metric.persistent(True)
                setattr(self, f"{stage}_{unit}", metric)
                suffix = "_epoch" if stage == "train" else ""  # train/bpc itself is per step
                self.log_at_epoch_end(f"{stage}/{unit}{suffix}", f"{stage}_{unit}",
                                      prog_bar=stage != "train" and unit == "bpc")

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        return self.net(x, hidden)

    @staticmethod
    def pretrained_net(net: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
        """`init_from`: the network config to fine-tune with: the checkpoint's architecture
        (the weights must fit it), this run's regularisation (dropout, weight drop, ...)."""
        theirs = dict(hparams["net"])
        return {**net_config(net), **{k: theirs[k] for k in ARCHITECTURE if k in theirs},
                "_partial_": True}  # still built with the vocabulary size from the data

    def load_pretrained(self, state_dict: Mapping[str, torch.Tensor], vocab: dict) -> list[str]:
        """`init_from`: copy a checkpoint's weights (weights only: no optimiser, no step).
        Rows of the vocabulary-sized tensors are copied by character, so characters new to
        the checkpoint keep their fresh rows; returns those characters."""
        old = Vocab.from_state_dict(vocab)
        rows = [old.index.get(c) for c in self.vocab.chars]
        if self.vocab.unk:
            rows.append(old.unk_index)
        own = self.net.state_dict()
        for name, weight in state_dict.items():
            key = name.removeprefix("net.")
            if key not in own:
                continue
            if key in VOCAB_ROWS:
                for i, j in enumerate(rows):
                    if j is not None:
                        own[key][i] = weight[j]
            else:
                own[key].copy_(weight)
        self.net.load_state_dict(own)
        return [c for c, j in zip(self.vocab.chars, rows, strict=False) if j is None]

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str
              ) -> tuple[torch.Tensor, Hidden | None]:
        x, y = batch
        hidden = detach(self.state.get(stage)) if self.carry_hidden else None
        logits, hidden = self.net(x, to_device(hidden, x.device))
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        return nll, hidden if self.carry_hidden else None

    def _update(self, stage: str, nll: torch.Tensor, chars: int) -> None:
        """Accumulate the split's mean, logged at its epoch end (exact: weighted by chars)."""
        getattr(self, f"{stage}_loss").update(nll.detach(), weight=chars)
        getattr(self, f"{stage}_bpc").update(nll.detach() / LN2, weight=chars)

    def on_train_epoch_start(self) -> None:
        self.state["train"] = None  # streams start again at the beginning of the text

    def on_validation_epoch_start(self) -> None:
        self.state["val"] = None

    def on_test_epoch_start(self) -> None:
        self.state["test"] = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
                      ) -> torch.Tensor | None:
        nll, hidden = self._step(batch, "train")
        loss = self.checked_loss(self.with_l2(nll))
        if loss is None:  # skipped: keep the state from before this window
            return None
        self.state["train"] = hidden
        if self.logs_this_step():  # only when the logger writes: no per-step cost otherwise
            self.log("train/loss", nll.detach(), prog_bar=True)
            self.log("train/bpc", nll.detach() / LN2)
        self._update("train", nll, batch[1].numel())
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        nll, self.state["val"] = self._step(batch, "val")
        self._update("val", nll, batch[1].numel())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        nll, self.state["test"] = self._step(batch, "test")
        self._update("test", nll, batch[1].numel())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The hidden state carried into the next training window: a run resumed mid-epoch
        continues each stream where it stopped (the data module saves the position)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["charlm_train_hidden"] = to_device(detach(self.state.get("train")),
                                                      torch.device("cpu"))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.state["train"] = checkpoint.get("charlm_train_hidden")

    def sample(self, prime: str, length: int, temperature: float = 1.0, **options: Any) -> str:
        """`sample_text` by this model's network and vocabulary (options: top_k, generator,
        top_p)."""
        return sample_text(self.net, self.vocab, prime, length, temperature, **options)
