"""Character-level language model: embedding -> RNN/LSTM/GRU -> linear, measured in BPC."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from hw2.data.vocab import Vocab
from hw2.models.base import TaskModule, WeightedMean

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
LN2 = math.log(2)

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def detach(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph between windows (truncated BPTT) but keep the state's values."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


class CharRNN(nn.Module):
    """The network alone (no training logic), so that it can be used and tested on its own."""

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        embedding_dim: int = 128,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.0,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"model.cell={cell!r} is not a cell; choose one of {sorted(CELLS)}")
        if tie_weights and embedding_dim != hidden_size:
            raise ValueError(f"model.tie_weights needs model.embedding_dim == model.hidden_size "
                             f"(got {embedding_dim} and {hidden_size})")
        extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = CELLS[cell](
            embedding_dim, hidden_size, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0, **extra,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """x: (batch, time) indices -> logits (batch, time, vocab), new hidden state."""
        out, hidden = self.rnn(self.embedding(x), hidden)
        return self.head(self.drop(out)), hidden


class CharLM(TaskModule):
    """Trains `CharRNN` with cross-entropy; reports loss in nats and bits per character."""

    def __init__(
        self,
        vocab: dict,
        carry_hidden: bool = True,
        cell: str = "lstm",
        embedding_dim: int = 128,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.0,
        tie_weights: bool = False,
        l2: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler, l2=l2)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.vocab = Vocab.from_state_dict(vocab)
        self.carry_hidden = carry_hidden
        self.net = CharRNN(len(self.vocab), cell, embedding_dim, hidden_size, num_layers,
                           dropout, tie_weights)
        self.state: dict[str, Hidden | None] = {}
        # mean NLL in nats, weighted by characters, so BPC is exact over a whole split
        # (no NaN check: it is a device sync every step; a NaN shows in the mean anyway)
        self.train_nll, self.val_nll, self.test_nll = (WeightedMean() for _ in range(3))

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        return self.net(x, hidden)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        hidden = detach(self.state.get(stage)) if self.carry_hidden else None
        logits, hidden = self.net(x, hidden)
        if self.carry_hidden:
            self.state[stage] = hidden
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        getattr(self, f"{stage}_nll").update(nll.detach(), weight=y.numel())
        return nll

    def _reset(self, stage: str) -> None:
        self.state[stage] = None  # streams start again at the beginning of the text

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
                      ) -> torch.Tensor:
        nll = self._step(batch, "train")
        if self.logs_this_step():  # only when the logger writes: no per-step cost otherwise
            self.log("train/loss", nll.detach(), prog_bar=True)
            self.log("train/bpc", nll.detach() / LN2)
        return self.with_l2(nll)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metric: MeanMetric = getattr(self, f"{stage}_nll")
        if metric.update_count == 0:
            return
        nats = metric.compute()
        metric.reset()
        suffix = "_epoch" if stage == "train" else ""  # train/bpc itself is per step
        self.log(f"{stage}/loss{suffix}", nats)
        self.log(f"{stage}/bpc{suffix}", nats / LN2, prog_bar=stage != "train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @torch.no_grad()
    def sample(
        self,
        prime: str,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> str:
        """Continue `prime` by `length` characters, one at a time, each fed back with the
        hidden state. temperature 0 = greedy; top_k keeps the k most likely characters."""
        if not prime:
            raise ValueError("prime must have at least one character")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or null, got {top_k}")
        x = self.vocab.encode(prime, "prime", strict=True).to(self.device)[None]
        was_training = self.training
        self.eval()
        try:
            logits, hidden = self.net(x)
            out: list[int] = []
            for _ in range(length):
                last = logits[0, -1].float()
                if self.vocab.unk:
                    last[self.vocab.unk_index] = -math.inf  # never emit <unk>
                if temperature == 0:
                    nxt = int(last.argmax())
                else:
                    last = last / temperature
                    if top_k is not None and top_k < last.numel():
                        kth = torch.topk(last, top_k).values[-1]
                        last = last.masked_fill(last < kth, -math.inf)
                    probs = torch.softmax(last, dim=-1)
                    nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
                out.append(nxt)
                logits, hidden = self.net(torch.tensor([[nxt]], device=self.device), hidden)
        finally:
            self.train(was_training)
        return prime + self.vocab.decode(out)
