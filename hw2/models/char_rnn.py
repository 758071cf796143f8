"""The CharLM's network: embedding -> RNN (tanh) / LSTM / GRU -> linear, and sampling from it.

Plain torch, no Lightning: a report's samples are drawn from checkpoints without importing the
training stack (`hw2.report.samples`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hw2.data.vocab import Vocab

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def to_device(hidden: Hidden | None, device: torch.device) -> Hidden | None:
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.to(device) for h in hidden)
    return hidden.to(device)


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """`weight` with entries zeroed at rate p (rounded to 1/256) and the rest scaled up, as
    dropout does. The mask is cut from random bytes, 8 per 64-bit draw: on a CPU that is 3x
    cheaper than F.dropout, whose bernoulli_ draws once per entry (3.1 vs 9.5 ms for a 2048x512
    LSTM matrix; F.dropout's two masks took 6 % of a recipe step)."""
    cut = min(round(p * 256), 255)
    draws = torch.empty(-(-weight.numel() // 8), dtype=torch.int64, device=weight.device)
    keep = draws.random_(-(2**63), 2**63 - 1).view(torch.uint8)[: weight.numel()] >= cut
    return torch.where(keep.view(weight.shape), weight * (256 / (256 - cut)), 0.0)


def locked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with one mask per stream, shared by all time steps of the window (variational
    dropout, AWD-LSTM): the same units are missing throughout, so a unit cannot be recovered
    from its neighbours in time, and it costs one mask per window instead of one per step."""
    if p == 0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * mask


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` kept on the smallest set of most likely entries whose mass reaches `top_p`
    (the most likely entry always stays), renormalised."""
    sorted_p, order = probs.sort(descending=True)
    before = sorted_p.cumsum(0) - sorted_p  # mass of the entries ranked above each one
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[before < top_p]] = True
    kept = probs * keep
    return kept / kept.sum()


def split_layers(hidden: Hidden | None, num_layers: int) -> list[Hidden | None]:
    """The per-layer states of a (num_layers, batch, hidden) state, as one-layer states."""
    if hidden is None:
        return [None] * num_layers
    if isinstance(hidden, tuple):
        return [tuple(h[i:i + 1] for h in hidden) for i in range(num_layers)]
    return [hidden[i:i + 1] for i in range(num_layers)]


def join_layers(states: list[Hidden]) -> Hidden:
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*states, strict=True))
    return torch.cat(states)


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
        weight_drop: float = 0.0,
        input_dropout: float = 0.0,
        locked_dropout: bool = False,
        output_dropout: float | None = None,
        head_all_layers: bool = False,
    ) -> None:
        super().__init__()
        for key, rate in (("dropout", dropout), ("input_dropout", input_dropout),
                          ("weight_drop", weight_drop),
                          ("output_dropout", 0.0 if output_dropout is None else output_dropout)):
            if not 0 <= rate < 1:
                raise ValueError(f"model.net.{key} must be in [0, 1), got {rate}")
        if cell not in CELLS:
            raise ValueError(f"model.net.cell={cell!r} is not a cell; choose one of "
                             f"{sorted(CELLS)}")
        if tie_weights and embedding_dim != hidden_size:
            raise ValueError("model.net.tie_weights needs model.net.embedding_dim == "
                             f"model.net.hidden_size (got {embedding_dim} and {hidden_size})")
        if tie_weights and head_all_layers and num_layers > 1:
            raise ValueError("model.net.tie_weights and model.net.head_all_layers exclude each "
                             "other: the head reads num_layers * hidden_size features, the "
                             "embedding has embedding_dim")
        extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.head_all_layers = head_all_layers and num_layers > 1
        split = locked_dropout or self.head_all_layers  # layers run one at a time (_recur)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = CELLS[cell](
            embedding_dim, hidden_size, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 and not split else 0.0, **extra,
        )
        self.dropout, self.input_dropout, self.locked = dropout, input_dropout, locked_dropout
        self.output_dropout = output_dropout
        # one-layer shells (on the meta device: they hold no weights, never move and are not
        # submodules) that run layer l with rnn's own layer-l weights, so that a locked mask
        # can go between the layers, the head can read every layer, and the parameter names
        # stay those of the fused cell
        self._shells = tuple(
            CELLS[cell](embedding_dim if i == 0 else hidden_size, hidden_size, 1,
                        batch_first=True, device="meta", **extra)
            for i in range(num_layers)) if split else ()
        head_in = hidden_size * (num_layers if self.head_all_layers else 1)
        self.head = nn.Linear(head_in, vocab_size)
        if tie_weights:
            self.head.weight = self.embedding.weight
        self.weight_drop = weight_drop

    def _recur(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """The cell, with DropConnect on its hidden-to-hidden weights in training (AWD-LSTM's
        weight drop: one mask per window, shared by every stream and time step, so it
        regularises the recurrence itself, which dropout between layers never touches). With
        locked dropout or a head over all layers, the layers run one at a time (dropout
        between them), and the output is then every layer's output side by side."""
        drop = self.training and self.weight_drop > 0
        split = self.head_all_layers or (self.training and self.locked)
        if not split and not drop:
            return self.rnn(x, hidden)
        weights = dict(self.rnn.named_parameters())
        if drop:
            weights.update({name: drop_connect(w, self.weight_drop)
                            for name, w in weights.items() if name.startswith("weight_hh")})
        if not split:
            return torch.func.functional_call(self.rnn, weights, (x, hidden))
        outputs, states = [], []
        layer_states = split_layers(hidden, len(self._shells))
        for i, (shell, state) in enumerate(zip(self._shells, layer_states, strict=True)):
            if i:
                x = self._drop(x, self.dropout)
            own = {name.removesuffix(f"_l{i}") + "_l0": w
                   for name, w in weights.items() if name.endswith(f"_l{i}")}
            x, state = torch.func.functional_call(shell, own, (x, state))
            outputs.append(x)
            states.append(state)
        return torch.cat(outputs, -1) if self.head_all_layers else x, join_layers(states)

    def set_dropout(self, p: float) -> None:
        """Change the rate of `dropout` (between layers, and before the head unless
        `output_dropout` is set) mid-run, for a schedule (`hw2.callbacks.dropout_ramp`); the
        fused cell reads its own copy per call."""
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.dropout = p
        if self.rnn.num_layers > 1 and not self._shells:
            self.rnn.dropout = p

    def _drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if not self.training or p == 0:
            return x
        return locked_dropout(x, p) if self.locked else F.dropout(x, p)

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """x: (batch, time) indices -> logits (batch, time, vocab), new hidden state."""
        out, hidden = self._recur(self._drop(self.embedding(x), self.input_dropout), hidden)
        p = self.dropout if self.output_dropout is None else self.output_dropout
        return self.head(self._drop(out, p)), hidden


@torch.no_grad()
def sample_text(
    net: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> str:
    """Continue `prime` by `length` characters, one at a time, each fed back with the hidden
    state. temperature 0 = greedy; top_k keeps the k most likely characters, top_p the
    smallest set of most likely characters whose probability reaches p (nucleus)."""
    if not prime:
        raise ValueError("prime must have at least one character")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or null, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or null, got {top_p}")
    device = next(net.parameters()).device
    x = vocab.encode(prime, "prime", strict=True).to(device)[None]
    was_training = net.training
    net.eval()
    try:
        logits, hidden = net(x)
        out: list[int] = []
        for _ in range(length):
            last = logits[0, -1].float()
            if vocab.unk:
                last[vocab.unk_index] = -math.inf  # never emit <unk>
            if temperature == 0:
                nxt = int(last.argmax())
            else:
                last = last / temperature
                if top_k is not None and top_k < last.numel():
                    kth = torch.topk(last, top_k).values[-1]
                    last = last.masked_fill(last < kth, -math.inf)
                probs = torch.softmax(last, dim=-1)
                if top_p is not None and top_p < 1:
                    probs = nucleus(probs, top_p)
                nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            out.append(nxt)
            logits, hidden = net(torch.tensor([[nxt]], device=device), hidden)
    finally:
        net.train(was_training)
    return prime + vocab.decode(out)
