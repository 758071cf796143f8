"""The epoch-end parameter histograms of the FoodCNN: how long writing them takes and how long the
training steps right after them take, per way of writing them:
  none         no histograms (the steps' reference)
  tensorboard  SummaryWriter.add_histogram of every parameter (numpy; its sum of squares is a
               BLAS dot, on numpy's OpenBLAS threads)
  hw2          hw2.callbacks.histograms.ParamHistograms: the same inside threadpoolctl's limit
               of numpy's BLAS to one thread
Each round runs every variant once, interleaved (a shared machine drifts); printed: the median
over rounds of the histograms' time and of the first and the next steps after them (with the
process's CPU time: spinning BLAS threads show there), and of the CPU the process burns while
its main thread sleeps right after writing them (threads left spinning, nothing else).

    python bench/histogram_cost.py                   # FoodCNN at 128 px, batch 32, 7 rounds
    python bench/histogram_cost.py --rounds 15 --image 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--image", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--idle", type=float, default=0.3,
                   help="seconds asleep after the histograms, to see threads left spinning")
    args = p.parse_args(argv)

    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from pytorch_lightning.loggers import TensorBoardLogger
    from threadpoolctl import threadpool_info

    from hw2.callbacks.histograms import ParamHistograms, layer_tag
    from hw2.models.food_cnn import FoodCNN

    class Net(pl.LightningModule):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

    torch.manual_seed(0)
    net = FoodCNN(10, args.image).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, args.image, args.image).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    module = Net(net)
    logger = TensorBoardLogger(tempfile.mkdtemp(prefix="histogram_cost_"), name="", version="")
    trainer = pl.Trainer(logger=logger, accelerator="cpu", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    writer = logger.experiment
    callback = ParamHistograms()

    def step() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t, time.process_time() - c

    def tensorboard() -> None:
        for name, param in net.named_parameters():
            writer.add_histogram(layer_tag(name), param.detach().cpu(), 0)

    variants: dict[str, Callable[[], None] | None] = {
        "none": None, "tensorboard": tensorboard,
        "hw2": lambda: callback.on_train_epoch_end(trainer, module)}

    def write_all(write: Callable[[], None] | None) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        if write is not None:
            write()
        return time.perf_counter() - t, time.process_time() - c

    times: dict[str, list[tuple[float, ...]]] = {v: [] for v in variants}
    for _ in range(3):
        step()
    for _ in range(args.rounds):
        for name, write in variants.items():
            step()
            hist, hist_cpu = write_all(write)
            first, first_cpu = step()
            rest = statistics.mean(step()[0] for _ in range(2))
            write_all(write)  # again, then idle: CPU spent meanwhile is other threads'
            c = time.process_time()
            time.sleep(args.idle)
            idle_cpu = time.process_time() - c
            times[name].append((hist, hist_cpu, first, first_cpu, rest, idle_cpu))
    writer.close()
    pools = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    print(f"FoodCNN {args.image} px, batch {args.batch}, {torch.get_num_threads()} torch threads,"
          f" thread pools {pools}; median of {args.rounds} rounds")
    print(f"| histograms | write all (CPU) | 1st step after (CPU) | next 2 steps (mean) "
          f"| CPU used while asleep {args.idle:g} s after |")
    print("|---|---|---|---|---|")
    for name, rows in times.items():
        m = [statistics.median(col) * 1e3 for col in zip(*rows, strict=True)]
        print(f"| {name} | {m[0]:.1f} ms ({m[1]:.1f}) | {m[2]:.0f} ms ({m[3]:.0f}) | "
              f"{m[4]:.0f} ms | {m[5]:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
