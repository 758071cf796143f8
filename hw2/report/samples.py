"""The CharLM samples of a report, drawn in a worker process.

Sampling needs torch (seconds to import, hundreds of MB) and each group's best checkpoint; the
rest of a report needs neither. The worker starts with the report, imports torch on the other
core while the runs are read and the figures drawn, then samples the drawn groups' checkpoints.
It rebuilds each network from the checkpoint with torch alone: Lightning would double both.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hw2.runs.layout import best_checkpoint, last_checkpoint

if TYPE_CHECKING:
    import torch

    from hw2.data.vocab import Vocab

PRIME, LENGTH, TEMPERATURE = "ROMEO", 300, 0.8
# the worker's environment: one thread (a batch of one character gains nothing from a second,
# which would take the core the report runs on), and glibc keeping freed memory in the heap as
# `hw2.utils.runtime.tune_malloc` does for training (else each recurrent step maps and unmaps
# its buffers afresh). Each halved the time of a sample (docs/benchmarks.md).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_TOP_PAD_": str(1 << 30)}


def sample_checkpoint(run_dir: Path) -> Path | None:
    """The run's best checkpoint, else its last.ckpt (a run without validation), else None."""
    best = best_checkpoint(run_dir)
    if best is not None:
        return best
    last = last_checkpoint(run_dir)
    return last if last.is_file() else None


def load_net(ckpt: Path) -> tuple[torch.nn.Module, Vocab]:
    """A CharLM checkpoint's network and vocabulary, rebuilt from its hyperparameters with torch
    alone (what `LightningModule.load_from_checkpoint` would rebuild, without Lightning)."""
    import torch

    from hw2.data.vocab import Vocab
    from hw2.models.nets import build_net

    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    hparams = state.get("hyper_parameters") or {}
    if "vocab" not in hparams or "net" not in hparams:
        raise ValueError(f"{ckpt} is not a CharLM checkpoint (no vocab and net hyperparameters)")
    vocab = Vocab.from_state_dict(hparams["vocab"])
    net = build_net(hparams["net"], vocab_size=len(vocab))
    net.load_state_dict({k.removeprefix("net."): v for k, v in state["state_dict"].items()
                         if k.startswith("net.")})
    return net.eval(), vocab


def sample_run(run_dir: Path, prime: str = PRIME, length: int = LENGTH) -> tuple[Path | None, str]:
    """(checkpoint, its sample) of one run: the text `generate.py ckpt=<it> seed=0` prints, so
    groups are compared on equal terms."""
    import torch

    from hw2.models.char_rnn import sample_text

    ckpt = sample_checkpoint(run_dir)
    if ckpt is None:
        return None, "(no checkpoint)"
    try:
        net, vocab = load_net(ckpt)
        return ckpt, sample_text(net, vocab, prime, length, TEMPERATURE,
                                 generator=torch.Generator().manual_seed(0))
    except Exception as e:  # a sample is illustration: report why it is missing, go on
        return ckpt, f"(no sample: {type(e).__name__}: {e})"


def serve() -> None:
    """The worker's loop: a JSON request per line on stdin, a JSON answer per line on stdout."""
    import hw2.models.char_rnn  # noqa: F401 - torch, imported before the first request

    for line in sys.stdin:
        request = json.loads(line)
        ckpt, text = sample_run(Path(request["run"]), request["prime"], request["length"])
        print(json.dumps({"ckpt": None if ckpt is None else str(ckpt), "text": text}),
              flush=True)


class SampleWorker:
    """A Python process running `serve` that draws samples: `submit` the run
    directories, go on with other work, then collect the `results` in order; `close()` ends
    it. A process of its own, not a fork: the report may run inside a sweep with threads."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # the hw2 this report runs
        env = {**os.environ, **WORKER_ENV, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from hw2.report.samples import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self._pending = 0

    def submit(self, run_dirs: list[Path], prime: str = PRIME, length: int = LENGTH) -> None:
        assert self._proc.stdin is not None
        try:
            for run_dir in run_dirs:
                self._proc.stdin.write(json.dumps({"run": str(run_dir), "prime": prime,
                                                   "length": length}) + "\n")
                self._pending += 1
            self._proc.stdin.flush()
        except OSError:  # the worker died: results() says so
            pass

    def results(self) -> list[tuple[Path | None, str]]:
        """The answers to every request submitted so far, in order."""
        assert self._proc.stdout is not None
        out: list[tuple[Path | None, str]] = []
        for _ in range(self._pending):
            line = self._proc.stdout.readline()
            if not line:  # the worker died (e.g. out of memory)
                out.append((None, f"(no sample: the sampling process ended with exit "
                                  f"{self._proc.poll()})"))
                continue
            answer = json.loads(line)
            out.append((None if answer["ckpt"] is None else Path(answer["ckpt"]),
                        answer["text"]))
        self._pending = 0
        return out

    def kill(self) -> None:
        """Stop it now, whatever it is doing (for a report with nothing to sample)."""
        self._proc.kill()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()  # end of requests: the worker's loop ends
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
