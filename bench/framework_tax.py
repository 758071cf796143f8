"""Framework tax: the same model on the same batches through `train.py` and in a plain loop.

For each task (CharLM on tiny shakespeare, FoodCNN on food10_small) and each variant, a fresh
process trains `--warmup` + `--steps` steps and reports steps/s over the timed steps,
characters or images per second, start-up time (process launch to the first training step),
peak CPU RSS and, on CUDA, peak GPU memory allocated; also steps per CPU-second of the process
(steadier than wall time on a shared machine; use `--threads 1` there). With `--repeats N` the
variants run N times interleaved and the best figure of each is kept. Variants:
  hw2     train.py's path: `hw2.config.compose_config` + `hw2.train.run`, default callbacks,
          loggers and progress bar (test=false); validation and epoch-end callbacks are left
          out of the timed steps (the plain loop has none), per-step work is all in;
  plain   a minimal loop: hw2's network (`CharRNN` / `FoodCNN`), batches from hw2's data module,
          the same optimiser, schedule, clipping and autocast as the config, no framework;
  plain+malloc / hw2-malloc  the same with / without `hw2.utils.runtime.tune_malloc` (CPU only by
          default): whether glibc malloc tuning helps this device.

    python bench/framework_tax.py                             # default models, auto device
    python bench/framework_tax.py --small --steps 30          # tiny models: a quick check
    python bench/framework_tax.py --device cuda --tasks charlm
    python bench/framework_tax.py --profile hw2 --tasks charlm --small   # cProfile of the hw2 run
    python bench/framework_tax.py --tasks cnn --hw2-overrides "logger=csv"   # bisect hw2's extras

The hw2 variant's clock stops at a validation and at the epoch's last step and restarts at the
next step (mid-epoch) or epoch start, as the plain loop's; `--profile` covers the same windows
(FRAMEWORK_TAX_PSTATS=<file> also saves it for pstats). With --repeats, each repeat's ratio
to the plain loop is printed too: one run's figure moves by a few % on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0_ENV = "FRAMEWORK_TAX_T0"


def data_dir() -> Path:
    return Path(os.environ.get("HW2_DATA_DIR") or ROOT.parent / "shared" / "data")


def task_settings(task: str, small: bool) -> dict:
    """Model/batch sizes per task; `small` keeps a shared 2-core CPU usable."""
    if task == "charlm":
        size = dict(batch=16, seq_len=64, hidden=128, emb=64) if small else \
            dict(batch=64, seq_len=128, hidden=512, emb=128)
        return size
    return dict(batch=16, image=64) if small else dict(batch=32, image=128)


def overrides(task: str, s: dict, device: str, max_steps: int, out: Path,
              malloc: bool) -> list[str]:
    common = [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "test=false",
              f"paths.root_dir={out}", f"+trainer.max_steps={max_steps}", "seed=0",
              f"tune_malloc={str(malloc).lower()}"]
    if task == "charlm":
        return common + [
            "data=tinyshakespeare", f"paths.data_dir={data_dir()}",
            f"data.batch_size={s['batch']}", f"data.seq_len={s['seq_len']}",
            f"model.net.hidden_size={s['hidden']}", f"model.net.embedding_dim={s['emb']}",
            "trainer.max_epochs=-1"]
    return common + [
        "task=cnn", f"data.root={data_dir() / 'food10_small'}", f"data.batch_size={s['batch']}",
        f"data.image_size={s['image']}", f"data.resize={s['image']}", "trainer.max_epochs=-1",
        f"data.num_workers={4 if device == 'cuda' else 0}"]


class Clock:
    """Start of the first step, start of the timed steps, end of the last timed step."""

    def __init__(self, device: str, warmup: int, steps: int, profile: bool = False) -> None:
        import cProfile

        import torch

        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.warmup, self.steps = warmup, steps
        self.first = self.start = self.end = float("nan")
        self.cpu_start = self.cpu_end = float("nan")  # process CPU time: steadier when shared
        self.profiler = cProfile.Profile() if profile else None  # the timed steps only
        self.paused: tuple[float, float] | None = None

    def before(self, i: int) -> None:
        if i == 0:
            self.first = time.time()
        if i == self.warmup:
            self.sync()
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()
            if self.profiler:
                self.profiler.enable()

    def pause(self) -> None:
        """Leave out what is not a training step (validation, epoch-end callbacks)."""
        if self.start == self.start and self.end != self.end and self.paused is None:
            self.sync()
            self.paused = (time.perf_counter(), time.process_time())
            if self.profiler:  # the profile shows what the timing counts
                self.profiler.disable()

    def resume(self) -> None:
        if self.paused is not None:
            self.start += time.perf_counter() - self.paused[0]
            self.cpu_start += time.process_time() - self.paused[1]
            self.paused = None
            if self.profiler:
                self.profiler.enable()

    def after(self, i: int) -> None:
        if i == self.warmup + self.steps - 1:
            self.sync()
            self.end = time.perf_counter()
            self.cpu_end = time.process_time()
            if self.profiler:
                self.profiler.disable()


def run_hw2(task: str, s: dict, device: str, clock: Clock, malloc: bool,
            extra: Sequence[str] = ()) -> None:
    import pytorch_lightning as pl

    from hw2.config import compose_config
    from hw2.train import run

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            # after a mid-epoch validation (val_check_interval < 1) and its checkpoint: the
            # steps go on; an epoch's first step resumed at the epoch start (loader included)
            clock.resume()
            clock.before(trainer.global_step)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.after(trainer.global_step - 1)
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                # the epoch's end starts here: other callbacks' on_train_epoch_end (histograms)
                # run before this one's, so pausing there would count them
                clock.pause()

        def on_validation_start(self, trainer, pl_module):  # not a step: the loop has none
            clock.pause()

        def on_train_epoch_end(self, trainer, pl_module):
            clock.pause()

        def on_train_epoch_start(self, trainer, pl_module):
            clock.resume()

    out = Path(tempfile.mkdtemp(prefix=f"tax_{task}_"))
    cfg = compose_config(overrides(task, s, device, clock.warmup + clock.steps, out, malloc)
                         + list(extra), out)
    run(cfg, extra_callbacks=[Timer()])


def timed_batches(loader: Iterable, total: int, clock: Clock) -> Iterator[tuple[bool, Any, Any]]:
    """`total` steps' batches as (first of an epoch?, x, y), over as many epochs as it takes,
    each step timed from before its yield to the next request. One loader for all epochs, as
    Lightning keeps it (its workers persist). As for hw2, from one epoch's last step to the next
    epoch's start is left out; the new iterator and its first batch count (Lightning fetches them
    after that start)."""
    i = 0
    while True:
        clock.resume()
        for j, (x, y) in enumerate(loader):
            clock.before(i)
            yield j == 0, x, y
            clock.after(i)
            i += 1
            if i == total:
                clock.pause()
                return
        clock.pause()


def run_plain(task: str, s: dict, device: str, clock: Clock, malloc: bool) -> None:
    """The loop that hw2 has to match: nothing but data, forward, loss, backward, step."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from hw2.models.base import warmup_cosine
    from hw2.utils.runtime import fast_precision, tune_malloc

    if malloc:
        tune_malloc()
    torch.manual_seed(0)
    dev = torch.device(device)
    bf16 = fast_precision("gpu" if device == "cuda" else "cpu").startswith("bf16")
    cast = (torch.autocast(dev.type, dtype=torch.bfloat16) if bf16
            else contextlib.nullcontext())
    total = clock.warmup + clock.steps
    if task == "charlm":
        from hw2.data.char_data import CharDataModule
        from hw2.data.corpus import TinyShakespeare
        from hw2.models.char_rnn import CharRNN, detach

        dm = CharDataModule(TinyShakespeare(str(data_dir()), str(ROOT / ".cache")),
                            batch_size=s["batch"], seq_len=s["seq_len"])
        dm.setup("fit")
        net = CharRNN(len(dm.vocab), "lstm",
                      s["emb"], s["hidden"], 2, dropout=0.2).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
        sched = warmup_cosine(opt, total, warmup_steps=100, min_lr_ratio=0.1)
        for new_epoch, x, y in timed_batches(dm.train_dataloader(), total, clock):
            if new_epoch:  # the hidden state starts afresh with each epoch, as in hw2
                hidden = None
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with cast:
                logits, hidden = net(x, detach(hidden))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        return
    from hw2.data.image_data import ImageDataModule
    from hw2.models.food_cnn import FoodCNN

    dm = ImageDataModule(str(data_dir() / "food10_small"), layout="folders",
                         image_size=s["image"], resize=s["image"], batch_size=s["batch"],
                         num_workers=4 if device == "cuda" else 0)
    dm.setup("fit")
    net = FoodCNN(len(dm.class_names), s["image"]).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _, x, y in timed_batches(dm.train_dataloader(), total, clock):
        x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(dev, non_blocking=True)
        with cast:
            logits = net(x).float()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def child(args: argparse.Namespace) -> None:
    """One variant in this process; prints one JSON line."""
    import torch

    task, variant = args.child.split(":")
    if args.threads:
        torch.set_num_threads(args.threads)
    s = task_settings(task, args.small)
    profile = bool(args.profile and variant == args.profile)
    clock = Clock(args.device, args.warmup, args.steps, profile)
    malloc = {"hw2": args.device == "cpu", "hw2-malloc": False, "plain": args.device == "cpu",
              "plain+malloc": True, "plain-malloc": False}[variant]
    if args.device == "cuda":
        malloc = variant in ("plain+malloc",)
    if variant.startswith("hw2"):
        run_hw2(task, s, args.device, clock, malloc, args.hw2_overrides.split())
    else:
        run_plain(task, s, args.device, clock, malloc)
    if clock.profiler:
        import pstats

        stats = pstats.Stats(clock.profiler, stream=sys.stderr)
        if os.environ.get("FRAMEWORK_TAX_PSTATS"):  # for pstats or snakeviz
            stats.dump_stats(os.environ["FRAMEWORK_TAX_PSTATS"])
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    per_step = (s["batch"] * s["seq_len"]) if task == "charlm" else s["batch"]
    sps = args.steps / (clock.end - clock.start)
    print("RESULT " + json.dumps({
        "task": task, "variant": variant, "malloc": malloc, "steps_per_s": sps,
        "items_per_s": sps * per_step,
        "steps_per_cpu_s": args.steps / (clock.cpu_end - clock.cpu_start),
        "startup_s": clock.first - float(os.environ.get(T0_ENV, clock.first)),
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_mib": (torch.cuda.max_memory_allocated() / 2**20
                    if args.device == "cuda" else None),
    }), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="charlm,cnn")
    p.add_argument("--variants", default=None,
                   help="default: hw2,plain (+ plain+malloc / plain-malloc to measure tune_malloc)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    p.add_argument("--small", action="store_true", help="tiny models and batches (quick check)")
    p.add_argument("--repeats", type=int, default=1, help="run each variant this many times "
                   "(interleaved) and keep the fastest")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (1 gives steadier figures on a busy machine)")
    p.add_argument("--profile", default=None, help="cProfile this variant (to stderr)")
    p.add_argument("--hw2-overrides", default="",
                   help="extra train.py overrides for the hw2 variants, space-separated: which "
                        "part costs, e.g. 'logger=csv callbacks.feature_maps=null'")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args)
        return 0
    variants = (args.variants or ("hw2,plain,plain-malloc" if args.device == "cpu"
                                  else "hw2,plain,plain+malloc")).split(",")
    need = {"charlm": data_dir() / "tinyshakespeare.txt", "cnn": data_dir() / "food10_small"}
    results: list[dict] = []
    for task in args.tasks.split(","):
        if not need[task].exists():
            print(f"skip {task}: {need[task]} not found (set HW2_DATA_DIR)", file=sys.stderr)
            continue
        for repeat in range(args.repeats):
            for variant in variants:
                cmd = [sys.executable, __file__, "--child", f"{task}:{variant}", "--device",
                       args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
                cmd += ["--small"] if args.small else []
                cmd += ["--threads", str(args.threads)] if args.threads else []
                cmd += ["--profile", args.profile] if args.profile else []
                cmd += ["--hw2-overrides", args.hw2_overrides] if args.hw2_overrides else []
                env = dict(os.environ, **{T0_ENV: repr(time.time())})
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    print(f"{task}:{variant} failed (rc {proc.returncode}):\n"
                          f"{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                if args.profile == variant:
                    print(proc.stderr[-12000:], file=sys.stderr)
                results.append(dict(json.loads(lines[-1][7:]), repeat=repeat))
                r = results[-1]
                print(f"  {task:<6} {variant:<13} {r['steps_per_s']:8.2f} steps/s "
                      f"{r['steps_per_cpu_s']:8.2f} steps/CPU-s startup {r['startup_s']:5.1f} s",
                      flush=True)
    best: dict[tuple[str, str], dict] = {}  # per variant the fastest run (least disturbed)
    for r in results:
        key = (r["task"], r["variant"])
        if key not in best:
            best[key] = dict(r)
        for k in ("steps_per_s", "items_per_s", "steps_per_cpu_s"):
            best[key][k] = max(best[key][k], r[k])
        for k in ("startup_s", "rss_mib"):
            best[key][k] = min(best[key][k], r[k])
    import platform

    print(f"\n{args.device}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads or 'default'} torch threads, "
          f"{'small' if args.small else 'default'} models, "
          f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}")
    print("| task | variant | tune_malloc | steps/s | chars or images/s | vs plain "
          "| steps per CPU-s | vs plain | start-up to 1st step | peak RSS | peak GPU alloc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (task, variant), r in best.items():
        base = best.get((task, "plain"))
        ratio = r["steps_per_s"] / base["steps_per_s"] if base else float("nan")
        cpu_ratio = (r["steps_per_cpu_s"] / base["steps_per_cpu_s"]) if base else float("nan")
        gpu = f"{r['gpu_mib']:.0f} MiB" if r["gpu_mib"] is not None else "-"
        print(f"| {task} | {variant} | {'on' if r['malloc'] else 'off'} | "
              f"{r['steps_per_s']:.2f} | {r['items_per_s']:,.0f} | {ratio:.3f} | "
              f"{r['steps_per_cpu_s']:.2f} | {cpu_ratio:.3f} | "
              f"{r['startup_s']:.1f} s | {r['rss_mib']:.0f} MiB | {gpu} |")
    if args.repeats > 1:  # the run-to-run spread: each repeat's variants ran back to back
        import statistics

        for task in dict.fromkeys(r["task"] for r in results):
            runs = {(r["variant"], r["repeat"]): r["steps_per_s"] for r in results
                    if r["task"] == task}
            for variant in variants:
                pairs = [runs[variant, k] / runs["plain", k] for k in range(args.repeats)
                         if (variant, k) in runs and ("plain", k) in runs]
                if variant != "plain" and pairs:
                    print(f"{task} {variant} / plain, per repeat: "
                          f"{' '.join(f'{x:.3f}' for x in pairs)} "
                          f"(median {statistics.median(pairs):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
