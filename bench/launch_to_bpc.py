"""Val BPC against seconds since launch: the clock a user sees, imports and start-up included.

Each argument is one run's overrides for `python train.py` (a CharLM config); each run is a fresh
process, and its val BPC points are read back from its TensorBoard events with their wall times.

    python bench/launch_to_bpc.py experiment=charlm_gpu --within 60
    python bench/launch_to_bpc.py experiment=charlm_gpu "experiment=charlm_gpu data.seq_len=64"
    python bench/launch_to_bpc.py --parallel ...  # all at once (on one GPU: an upper bound on time)

Prints each run's curve, then one table: best val BPC within `--within` seconds of launch, the
best overall and when it came. The goal: <= 2.00 within 60 s on one GPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def curve(run_dir: Path, t0: float) -> list[tuple[int, float, float]]:
    """(step, seconds since launch, val BPC) of a finished run, read as the sweep report reads
    runs (all event files of the run merged)."""
    if not (run_dir / ".hydra").is_dir():  # the run never started
        return []
    from hw2.report.runs import load_run

    return [(step, wall - t0, v) for step, wall, v in load_run(run_dir).scalars.get("val/bpc", [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="one quoted string of train.py overrides per run")
    ap.add_argument("--within", type=float, default=60.0, help="seconds since launch")
    ap.add_argument("--parallel", action="store_true", help="launch all runs at once")
    ap.add_argument("--out", default=None, help="run directories (default: a temp dir)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="launch_to_bpc_")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    jobs = []
    for i, spec in enumerate(args.runs):
        name = f"run{i}"
        if next(out.glob(f"logs/*/runs/{name}"), None):  # train.py would resume it: no timing
            sys.exit(f"{out} already holds {name}: give --out a new folder")
        cmd = [sys.executable, str(ROOT / "train.py"), *shlex.split(spec), f"run_name={name}",
               f"paths.root_dir={out}", "test=false", "callbacks.progress_bar.refresh_rate=0",
               "trainer.enable_model_summary=false"]
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        jobs.append((name, spec, t0, proc, log))
        print(f"== {name}: {spec}", flush=True)
        if not args.parallel:
            proc.wait()
    rows = []
    for name, spec, t0, proc, log in jobs:
        rc = proc.wait()
        log.close()
        pts = curve(next(out.glob(f"logs/*/runs/{name}"), out / "missing"), t0)
        print(f"-- {name} (exit {rc}): {spec}")
        for step, t, v in pts:
            print(f"   step {step:6d}  {t:7.1f} s  val BPC {v:.3f}")
        if rc != 0:
            print("   " + "\n   ".join((out / f"{name}.log").read_text().splitlines()[-8:]))
        within = [v for _, t, v in pts if t <= args.within]
        best = min(pts, key=lambda p: p[2]) if pts else None
        rows.append((spec, min(within) if within else None, best))
    mode = "all at once" if args.parallel else "one at a time"
    print(f"\n{len(rows)} run(s), {mode}; seconds from process launch\n")
    print(f"| overrides | best val BPC within {args.within:.0f} s | best val BPC (at s) |")
    print("|---|---|---|")
    for spec, within, best in rows:
        w = f"{within:.3f}" if within is not None else "-"
        b = f"{best[2]:.3f} ({best[1]:.0f} s)" if best else "-"
        print(f"| `{spec}` | {w} | {b} |")


if __name__ == "__main__":
    main()
