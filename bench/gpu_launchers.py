"""One GPU per job on one machine: `launcher=local_gpus` (hw2/sweeps/gpu_slots.py) against
`launcher=ray` (Hydra's Ray launcher, a local Ray), the same sweep through each.

    python bench/gpu_launchers.py [--jobs 4] [--devices 2] [--steps 200]
    python bench/gpu_launchers.py --devices 2 --two-sweeps    # also two sweeps at once, each way

A CharLM sweep of `--jobs` jobs on tiny Shakespeare (`$HW2_DATA_DIR/tinyshakespeare.txt`), run
first through one launcher, then the other, over `--devices` devices: fake ones on a CPU machine
(`gpu_pool=[0,..]` / Ray's logical GPUs, jobs train on the CPU), the real ones where CUDA is
present. Prints side by side, from the command's wall clock and each job's run.json: launch to
exit, launch to the first job's start, the mean job wall, and the largest gap between one job
leaving a device and the next job taking it. `--two-sweeps` then starts two such sweeps at the
same time each way and counts pairs of jobs, across the sweeps, that held the same device at once.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw2.runs.record import read_record  # noqa: E402

JOB = ["data=text_file", "model.net.hidden_size=64", "model.net.embedding_dim=16",
       "model.net.num_layers=1", "data.seq_len=32", "data.batch_size=16", "trainer.max_epochs=50",
       "++trainer.limit_val_batches=5", "trainer.num_sanity_val_steps=0", "logger=csv",
       "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
       "~callbacks.param_histograms", "callbacks.text_sample=null", "sample_at_end=null",
       "test=false", "hydra.callbacks.sweep_report.samples=false",
       "preflight=false"]


def launcher_args(name: str, devices: int, locks: Path) -> list[str]:
    cpu = [] if torch.cuda.is_available() else ["trainer.accelerator=cpu"]
    if name == "local_gpus":
        return ["launcher=local_gpus", f"gpu_pool=[{','.join(map(str, range(devices)))}]",
                f"hydra.launcher.n_jobs={devices}", f"gpu_lock_dir={locks}", *cpu]
    return ["launcher=ray", f"hydra.launcher.ray.init.num_gpus={devices}",
            f"hydra.launcher.ray.init.num_cpus={devices}", "hydra.launcher.ray.remote.num_cpus=0",
            "+hydra.launcher.ray.init.include_dashboard=false", *cpu]


def start(name: str, out: Path, tag: str, args: argparse.Namespace) -> subprocess.Popen:
    sweep = out / tag
    cmd = [sys.executable, "train.py", "-m", *JOB, f"data.corpus.path={args.text}",
           f"+trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps // 2}",
           f"paths.root_dir={sweep}", f"hydra.sweep.dir={sweep / 'sweep'}",
           *launcher_args(name, args.devices, out / "locks"),
           f"seed={','.join(str(s) for s in range(1, args.jobs + 1))}"]
    # one thread per job: `devices` jobs at once share the machine's cores alike either way
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=(out / f"{tag}.log").open("w"),
                            stderr=subprocess.STDOUT, env=env)


def records(sweep: Path) -> list[dict]:
    recs = [read_record(d) for d in sorted(sweep.iterdir()) if d.name.isdigit()]
    return [r for r in recs if r is not None]


def handover_gap(recs: list[dict]) -> float:
    """The largest wait between a job ending on a device and the next job starting on it."""
    gaps = []
    for dev in {r["gpu"] for r in recs}:
        spans = sorted((r["started"], r["ended"]) for r in recs if r["gpu"] == dev)
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    return max(gaps, default=float("nan"))


def shared_device(a: list[dict], b: list[dict]) -> int:
    """Pairs of jobs, one from each sweep, that held the same device at the same time."""
    return sum(x["gpu"] == y["gpu"] and x["started"] < y["ended"] and y["started"] < x["ended"]
               for x in a for y in b)


def wait(procs: dict[str, subprocess.Popen], t0: float) -> dict[str, float]:
    walls: dict[str, float] = {}
    while len(walls) < len(procs):
        for tag, p in procs.items():
            if tag not in walls and p.poll() is not None:
                walls[tag] = time.time() - t0
        time.sleep(0.2)
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200, help="training steps per job")
    ap.add_argument("--two-sweeps", action="store_true")
    ap.add_argument("--text", type=Path, default=Path(os.environ.get(
        "HW2_DATA_DIR", str(ROOT.parent / "shared" / "data"))) / "tinyshakespeare.txt")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.text.is_file():
        sys.exit(f"no text at {args.text}: set HW2_DATA_DIR or pass --text")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-launchers-"))
    out.mkdir(parents=True, exist_ok=True)
    names = ("local_gpus", "ray")
    rows: dict[str, dict[str, str]] = {}
    for name in names:
        t0 = time.time()
        wall = wait({name: start(name, out, name, args)}, t0)[name]
        recs = records(out / name / "sweep")
        done = sum(r["status"] == "finished" for r in recs)
        if done != args.jobs:
            sys.exit(f"{name}: {done} of {args.jobs} jobs finished; see {out / (name + '.log')}")
        rows.setdefault("launch to exit (s)", {})[name] = f"{wall:.1f}"
        rows.setdefault("launch to first job (s)", {})[name] = \
            f"{min(r['started'] for r in recs) - t0:.1f}"
        rows.setdefault("mean job wall (s)", {})[name] = \
            f"{sum(r['ended'] - r['started'] for r in recs) / len(recs):.1f}"
        rows.setdefault("device hand-over, max (s)", {})[name] = f"{handover_gap(recs):.1f}"
    if args.two_sweeps:
        for name in names:
            t0 = time.time()
            tags = (f"{name}_a", f"{name}_b")
            walls = wait({tag: start(name, out, tag, args) for tag in tags}, t0)
            a, b = (records(out / tag / "sweep") for tag in tags)
            rows.setdefault("two sweeps: launch to exit (s)", {})[name] = \
                f"{max(walls.values()):.1f}"
            rows.setdefault("two sweeps: jobs sharing a device", {})[name] = \
                f"{shared_device(a, b)} of {len(a) * len(b)} pairs"
    print(f"\n{args.jobs} jobs x {args.steps} steps over {args.devices} "
          f"{'GPUs' if torch.cuda.is_available() else 'fake devices (CPU training)'}, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'':<36}" + "".join(f"{n:>24}" for n in names))
    for label, cells in rows.items():
        print(f"{label:<36}" + "".join(f"{cells[n]:>24}" for n in names))
    print(f"\nlogs and runs in {out}")


if __name__ == "__main__":
    main()
