"""Fault drills on real `python train.py` runs: the small CharLM config, its text, the fault
overrides (`tests.helpers.faults.Fault`) and what the drills read back (curves, steps)."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CHAR = ["data=text_file", "model.net.hidden_size=32", "model.net.embedding_dim=16",
        "model.net.num_layers=1",
        "data.batch_size=4", "data.seq_len=16", "trainer.max_epochs=2",
        "trainer.val_check_interval=0.25", "callbacks.text_sample.length=20",
        # whole epochs: not the fractions of the default first-run preset
        "++trainer.limit_train_batches=1.0", "++trainer.limit_val_batches=1.0"]


def write_drill_text(path: Path) -> Path:
    """1,600 characters: 4 streams x 25 windows of 16 per epoch, validation every 6."""
    lines = ["But soft, what light through yonder window breaks?", "A plague o' both your houses!",
             "It is the east, and Juliet is the sun.", "Parting is such sweet sorrow."]
    body = "".join(f"{['ROMEO', 'JULIET', 'NURSE'][i % 3]}:\n{lines[(i * 7) % 4]}\n"
                   for i in range(60))
    path.write_text(body[:1600], encoding="utf-8")
    return path


def fault(kind: str, **where: int) -> list[str]:
    return ["+callbacks.fault._target_=tests.helpers.faults.Fault", f"+callbacks.fault.kind={kind}",
            *(f"+callbacks.fault.{k}={v}" for k, v in where.items())]


def run_dir(logs: Path, task: str, name: str) -> Path:
    return logs / task / "runs" / name


def curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's TensorBoard scalars (step, value) by tag, the `hp/` summary left out."""
    events = EventAccumulator(str(path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if not tag.startswith("hp/")}


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
