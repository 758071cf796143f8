"""Validation BPC against wall time for the CharLM cells on tiny shakespeare (90/10), on this CPU.

    python bench/charlm.py                      # lstm, gru, rnn; 30 min each
    python bench/charlm.py --cells lstm --minutes 2

Each cell trains through the project's own path (Hydra config -> hw2.train.run) with the tuned
recipe `experiment=charlm_recipe` (2x512, stream batches 32x64, dropout 0.25, weight drop 0.2,
AdamW + weight decay, `trainer.precision=auto`) and the same time budget: the warm-up + cosine
schedule is sized from each cell's measured training speed so that it ends with the budget
(`trainer.max_time` stops the run). Val BPC is read back from the TensorBoard events with their
wall times. Prints one table at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def probe_chars_per_sec(cell: str, batch: int, seq_len: int, dropout: float,
                        weight_drop: float, locked_dropout: bool) -> float:
    """Training throughput of the bare network at the precision the trainer will pick, to size
    the LR schedule to the time budget."""
    import torch
    import torch.nn.functional as F

    from hw2.models.char_rnn import CharRNN
    from hw2.utils.runtime import fast_precision, tune_malloc

    tune_malloc()  # as the trainer does
    bf16 = fast_precision("cpu") == "bf16-mixed"
    net = CharRNN(65, cell, 128, 512, 2, dropout=dropout, weight_drop=weight_drop,
                  locked_dropout=locked_dropout)
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    x = torch.randint(0, 65, (batch, seq_len))
    for i in range(13):
        if i == 3:
            t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = net(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 10 * batch * seq_len / (time.perf_counter() - t)


def best_by(curve: list[tuple[float, float]], wall: float, minutes: float) -> str:
    """Best val BPC seen within `minutes` of the start ('-' if the run was shorter)."""
    seen = [v for t, v in curve if t <= minutes * 60 + 5]
    return f"{min(seen):.3f}" if seen and wall >= minutes * 60 - 30 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--val-every", type=int, default=None,
                    help="steps between validations (default: the recipe's)")
    ap.add_argument("--data-dir", default=os.environ.get("HW2_DATA_DIR",
                                                        str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=None, help="run directories (default: a temp dir)")
    args = ap.parse_args()
    if not (Path(args.data_dir) / "tinyshakespeare.txt").is_file():
        print(f"skip: {args.data_dir}/tinyshakespeare.txt not found (set HW2_DATA_DIR)")
        return

    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hw2.config import compose_config
    from hw2.models.charlm import CharLM
    from hw2.runs.checkpoints import load_module
    from hw2.train import run

    out_root = Path(args.out or tempfile.mkdtemp(prefix="bench_charlm_"))
    recipe = compose_config(["experiment=charlm_recipe"], out_root / "recipe")
    batch, seq_len = recipe.data.batch_size, recipe.data.seq_len
    val_every = args.val_every or int(recipe.trainer.val_check_interval)
    rows = []
    for cell in args.cells.split(","):
        cps = probe_chars_per_sec(cell, batch, seq_len, recipe.model.net.dropout,
                                  recipe.model.net.weight_drop, recipe.model.net.locked_dropout)
        # cosine schedule sized to the time budget (validation and start-up ~5 %); max_time
        # stops the run if the machine is slower than the probe said
        steps = int(args.minutes * 60 * cps / (batch * seq_len) * 0.95)
        out = out_root / cell
        cfg = compose_config([
            "experiment=charlm_recipe", f"paths.data_dir={args.data_dir}", f"model.net.cell={cell}",
            f"paths.root_dir={out_root}", f"trainer.max_steps={steps}",
            f"+trainer.max_time={{minutes: {args.minutes}}}",
            f"trainer.val_check_interval={val_every}",
            "callbacks.progress_bar.refresh_rate=0",
            "trainer.enable_model_summary=false", "callbacks.text_sample.length=100",
        ], out)
        print(f"== {cell}: probe {cps:,.0f} chars/s, schedule {steps} steps, "
              f"{args.minutes} min -> {out}", flush=True)
        t0 = time.time()
        metrics = run(cfg)
        wall = time.time() - t0
        ev = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
        ev.Reload()
        curve = [(e.wall_time - t0, e.value) for e in ev.Scalars("val/bpc")]
        last = out / "checkpoints" / "last.ckpt"
        step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        params = sum(p.numel() for p in load_module(last, CharLM).parameters())

        rows.append((cell, params, step * batch * seq_len / wall, *(best_by(curve, wall, m)
                                                                    for m in (2, 10, 30)),
                     metrics.get("best/val/bpc", math.nan), wall))  # no test split
        print("   minute  val_bpc")
        for t, v in curve:
            print(f"   {t / 60:6.2f}  {v:.3f}")
    print("\n| cell | parameters | chars/s (train, incl. val) | val BPC 2 min | 10 min | 30 min "
          "| best val BPC (end) | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for cell, params, cps, b2, b10, b30, best, wall in rows:
        print(f"| {cell} | {params / 1e6:.2f}M | {cps:,.0f} | {b2} | {b10} | {b30} | {best:.3f} "
              f"| {wall / 60:.1f} min |")


if __name__ == "__main__":
    main()
