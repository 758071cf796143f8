"""Photo loading against training compute: the photo cache (`data.cache=true`) against decoding
every photo every epoch, for `experiment=cnn_recipe_bf16` at 128 px and at 512 px.

Side by side, per size and device (CPU; CUDA where present):
  loader pil     the training loader alone through PIL (decode, resize, crop, flip, jitter,
                 tensor): images/s;
  loader cache   the same from the photo cache, batches finished (jitter + normalise) as
                 `on_after_batch_transfer` does: images/s;
  compute        training steps on one fixed batch (the recipe's model, optimiser, autocast
                 and channels-last): steps/s and images/s;
  plain pil      a hand-written loop (same step) on the PIL loader: the baseline;
  plain cache    the same loop on cached batches;
  e2e pil/cache  `python train.py experiment=cnn_recipe_bf16` (its callbacks, loggers,
                 checkpoints; test=false) in a fresh process, timed from its `--warmup`-th step
                 over `--steps` steps, epoch ends included, without and with the cache;
  e2e cache w1   the same with `data.num_workers=1`: crops in a worker process, overlapping
                 the training step (on CUDA: 1 instead of the 4 used otherwise).
Variants run interleaved `--repeats` times; the best of each is shown (others share the
machine: figures move between repeats) with `uptime` before and after. The caches are built
once first (build time and size printed) under `--cache-dir`.

    python bench/photo_loader.py --quick                 # a few minutes on 2 cores
    python bench/photo_loader.py --sizes 128 --repeats 3 --steps 100
Data: $HW2_DATA_DIR/food10_dev (train/ + test/), else ../shared/data/food10_dev (or --data).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 32
VARIANTS = ("loader pil", "loader cache", "compute", "plain pil", "plain cache", "e2e pil",
            "e2e cache", "e2e cache w1")


def default_data() -> Path:
    base = os.environ.get("HW2_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(base) / "food10_dev"


def recipe(size: int, data: Path, cache: bool, cache_dir: Path, out: Path, device: str
           ) -> list[str]:
    """The overrides of `python train.py experiment=cnn_recipe_bf16` at this size."""
    sized = [] if size == 128 else [f"data.image_size={size}", "data.resize=null",
                                    "data.eval_resize=null"]
    workers = ["data.num_workers=4"] if device == "cuda" else []
    return ["experiment=cnn_recipe_bf16", "data=image_folder", f"data.root={data}",
            f"data.cache={str(cache).lower()}", f"paths.cache_dir={cache_dir}",
            f"paths.log_dir={out}", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            *sized, *workers]


def setup(args: argparse.Namespace, size: int, cache: bool, device: str) -> tuple[Any, Any]:
    """The recipe's data module (set up; builds the cache on first use) and model."""
    from hydra.utils import instantiate

    from hw2.config import compose_config

    out = Path(tempfile.mkdtemp(prefix="photo_loader_", dir=args.work))
    cfg = compose_config(recipe(size, args.data, cache, args.cache_dir, out, device), out)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model, **dm.model_kwargs(), _convert_="all")
    return dm, model


class Stepper:
    """The recipe's training step outside Lightning: autocast (bf16 where the device has it),
    channels-last model, label-smoothed cross-entropy, AdamW."""

    def __init__(self, model: Any, device: str) -> None:
        import torch

        from hw2.utils.runtime import fast_precision

        self.torch, self.device = torch, torch.device(device)
        self.model = model.to(self.device).train()
        self.opt = model.optimizer_factory(params=model.parameters())  # AdamW; no schedule
        bf16 = fast_precision("gpu" if device == "cuda" else "cpu").startswith("bf16")
        self.cast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def __call__(self, x: Any, y: Any) -> None:
        import torch.nn.functional as F

        with self.cast():
            logits = self.model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.model.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


def batches(dm: Any, device: str, n: int):
    """`n` training batches on the device, finished as Lightning's transfer hook does."""
    import torch

    dev = torch.device(device)
    done = 0
    while True:
        for batch in dm.train_dataloader():
            batch = [b.to(dev, non_blocking=True) for b in batch]
            yield dm.on_after_batch_transfer(batch, 0)
            done += 1
            if done >= n:
                return


def timed(n: int, warmup: int, work) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of the last `n` of `warmup + n` calls
    of `work(i)`."""
    start = cpu = 0.0
    for i in range(warmup + n):
        if i == warmup:
            start, cpu = time.perf_counter(), time.process_time()
        work(i)
    return time.perf_counter() - start, time.process_time() - cpu


def rates(steps: int, seconds: float, cpu: float) -> dict[str, float]:
    return {"steps/s": steps / seconds, "images/s": steps * BATCH / seconds,
            "cpu ms/batch": cpu / steps * 1e3}


def measure_in_process(variant: str, args: argparse.Namespace, size: int, device: str,
                       steps: int) -> dict[str, float]:
    import torch

    cache = variant.endswith("cache")
    dm, model = setup(args, size, cache or variant == "compute", device)
    if variant.startswith("loader"):
        it = batches(dm, device, args.warmup + steps)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        return rates(steps, *timed(steps, args.warmup, lambda i: (next(it), sync())))
    step = Stepper(model, device)
    if variant == "compute":
        x, y = next(batches(dm, device, 1))
        return rates(steps, *timed(steps, args.warmup, lambda i: (step(x, y), step.sync())))
    it = batches(dm, device, args.warmup + steps)
    return rates(steps, *timed(steps, args.warmup, lambda i: (step(*next(it)), step.sync())))


def measure_e2e(args: argparse.Namespace, size: int, cache: bool, device: str, steps: int,
                extra: list[str]) -> dict[str, float]:
    """`hw2.train.run` (what `python train.py` runs) with a clock callback, in this process
    (a fresh child per measurement, see `main`)."""
    import pytorch_lightning as pl

    from hw2.config import compose_config
    from hw2.train import run

    marks: dict[str, float] = {}
    first, last = args.warmup, args.warmup + steps

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == first:
                marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == last:
                marks["end"], marks["cpu end"] = time.perf_counter(), time.process_time()

    out = Path(tempfile.mkdtemp(prefix="photo_loader_e2e_", dir=args.work))
    overrides = [*recipe(size, args.data, cache, args.cache_dir, out, device), "test=false",
                 f"+trainer.max_steps={last}", "callbacks.progress_bar.refresh_rate=0",
                 "trainer.enable_model_summary=false", *extra]
    run(compose_config(overrides, out), extra_callbacks=[Clock()])
    return rates(steps, marks["end"] - marks["start"], marks["cpu end"] - marks["cpu"])


def child(args: argparse.Namespace) -> None:
    variant, size, device = args.child, args.size, args.device
    steps = args.steps if size == 128 else args.steps_512
    if device == "cpu":
        from hw2.utils.runtime import tune_malloc

        tune_malloc()  # as `python train.py` does on a CPU: every variant gets the same heap
    if variant.startswith("e2e"):
        result = measure_e2e(args, size, "cache" in variant, device, steps,
                             ["data.num_workers=1"] if variant.endswith("w1") else [])
    else:
        result = measure_in_process(variant, args, size, device, steps)
    result["peak RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args: argparse.Namespace, variant: str, size: int, device: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant, "--size", str(size), "--device", device,
           "--data", str(args.data), "--cache-dir", str(args.cache_dir), "--work", str(args.work),
           "--steps", str(args.steps), "--steps-512", str(args.steps_512),
           "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"{variant} {size} px {device} failed:\n{done.stdout[-3000:]}", file=sys.stderr)
    return {}


def build_caches(args: argparse.Namespace, size: int) -> None:
    """Build (or find) the caches of this size; print the time and the files' sizes."""
    before = set(args.cache_dir.glob("*.photos"))
    start = time.perf_counter()
    dm, _ = setup(args, size, True, "cpu")
    seconds = time.perf_counter() - start
    files = sorted(ds.cache.path for ds in dm.datasets.values())
    built = "built" if any(p not in before for p in files) else "found"
    total = sum(p.stat().st_size for p in files) / 1e6
    print(f"{size} px cache: {built} in {seconds:.1f} s (set-up included), {total:.0f} MB on "
          "disk: " + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in files),
          flush=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def report(results: dict[tuple[str, int, str], list[dict[str, float]]], sizes: list[int],
           devices: list[str]) -> None:
    for device in devices:
        for size in sizes:
            best = {}
            for variant in VARIANTS:
                runs = [r for r in results.get((variant, size, device), []) if r]
                if runs:
                    best[variant] = max(runs, key=lambda r: r["images/s"])
            if not best:
                continue
            print(f"\n{size} px, {device}, batch {BATCH}: the best repeat (CPU ms/batch: all "
                  "threads of the process, steadier than wall time on a shared machine)")
            print(f"  {'variant':<13} {'steps/s':>8} {'images/s':>9} {'CPU ms/batch':>13} "
                  f"{'peak RSS':>9}  images/s of each repeat")
            for variant, r in best.items():
                every = " ".join(f"{x['images/s']:.0f}" for x in
                                 results[(variant, size, device)] if x)
                steps = f"{r['steps/s']:8.2f}" if "steps/s" in r else f"{'':8}"
                print(f"  {variant:<13} {steps} {r['images/s']:9.1f} {r['cpu ms/batch']:13.1f} "
                      f"{r['peak RSS MB']:7.0f}MB  {every}")
            compute = best.get("compute", {}).get("images/s")
            plain = best.get("plain pil", {}).get("images/s")
            for variant in ("e2e cache", "e2e cache w1", "e2e pil", "plain cache"):
                if variant in best and compute and plain:
                    rate = best[variant]["images/s"]
                    print(f"  {variant}: {rate / compute:.2f} of compute only, "
                          f"{rate / plain:.2f}x the plain PIL loop")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="train/ + test/ photo folder")
    p.add_argument("--sizes", type=lambda v: [int(s) for s in v.split(",")], default=[128, 512])
    p.add_argument("--devices", type=lambda v: v.split(","), default=None,
                   help="cpu,cuda (default: cpu, and cuda where present)")
    p.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=100, help="timed steps (batches) at 128 px")
    p.add_argument("--steps-512", type=int, default=12, help="timed steps at 512 px")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="40 / 6 timed steps, 3 warm-up, one repeat: a few minutes on 2 cores")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the caches go (default: a new temporary folder)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for run directories")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.steps, args.steps_512, args.warmup, args.repeats = 40, 6, 3, 1
    args.data = args.data or default_data()
    if not (args.data / "train").is_dir():
        print(f"no photos at {args.data}: set HW2_DATA_DIR (or --data) to a folder with train/ "
              "and test/; nothing to measure", file=sys.stderr)
        return 0
    args.work = args.work or Path(tempfile.mkdtemp(prefix="photo_loader_"))
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache_dir = args.cache_dir or args.work / "cache"
    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    flags = next((x for x in lines if x.startswith("flags")), "")
    cpu += " with AVX512-BF16" if "avx512_bf16" in flags else ""
    print(f"{args.data}; {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"before: {uptime()}", flush=True)
    for size in args.sizes:
        build_caches(args, size)
    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for device in devices:
            for size in args.sizes:
                for variant in [v for v in VARIANTS if v in args.variants]:
                    r = spawn(args, variant, size, device)
                    results.setdefault((variant, size, device), []).append(r)
                    print(f"  repeat {repeat + 1}: {variant:<12} {size} px {device}: "
                          f"{r.get('images/s', float('nan')):.1f} images/s", flush=True)
    report(results, args.sizes, devices)
    print(f"\nafter: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
