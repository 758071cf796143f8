"""A real one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the engine tests.

Started as root with a private slurm.conf in a temporary folder (its own ports, state and logs;
`SLURM_CONF` points sbatch/squeue/scontrol at it): slurmctld, slurmd with a gres of 2 GPUs, and
munged when it is not running already. A count-only GPU gres makes slurmd report 0 GPUs and drain
the node, so the GPUs are two character devices `/dev/fakegpu0-1` (the null device's numbers).
Everything `slurm_cluster` started is stopped by its process id at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo")
FAKE_GPUS = [Path(f"/dev/fakegpu{i}") for i in range(2)]


@dataclass
class SlurmCluster:
    conf: Path
    node: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> str:
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
        return res.stdout

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id, check=False)
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "GONE"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _munge_works() -> bool:
    if not shutil.which("munge"):
        return False
    enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if enc.returncode != 0:
        return False
    dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
    return dec.returncode == 0


def _start_munge() -> int | None:
    """Start munged as the `munge` user with the packaged key; its pid, or None if it ran."""
    if _munge_works():
        return None
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, timeout=30)
    for _ in range(50):
        if _munge_works():
            return int(Path("/run/munge/munged.pid").read_text())
        time.sleep(0.2)
    raise RuntimeError("munged did not start: see /var/log/munge/munged.log")


def _write_conf(tmp: Path, node: str) -> Path:
    ctld_port, slurmd_port = _free_ports(2)
    for d in ("state", "spool", "log"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    conf = tmp / "slurm.conf"
    conf.write_text(f"""\
ClusterName=hw2test
SlurmctldHost={node}
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName={node} CPUs=2 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    (tmp / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={node} Name=gpu File=/dev/fakegpu[0-1]\n")
    return conf


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _step_daemons(tmp: Path) -> list[int]:
    """This cluster's slurmstepd processes (one per job step; they run in its log folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == "slurmstepd" and os.readlink(
                    proc / "cwd").startswith(str(tmp)):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _wait_for_steps(tmp: Path, timeout: float = 60) -> None:
    """Let the step daemons report their jobs' ends to slurmd and exit before slurmd stops."""
    deadline = time.time() + timeout
    while _step_daemons(tmp) and time.time() < deadline:
        time.sleep(0.5)


@contextmanager
def slurm_cluster(tmp: Path) -> Iterator[SlurmCluster]:
    """Start the cluster with its files under `tmp`, yield it, stop what was started; skips
    the test where the daemons or root are missing."""
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        pytest.skip(f"SLURM test cluster needs {missing}: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("SLURM test cluster needs root (slurmd runs jobs as their user)")
    node = socket.gethostname().split(".")[0]
    made = []
    for dev in FAKE_GPUS:
        if not dev.exists():
            subprocess.run(["mknod", str(dev), "c", "1", "3"], check=True)
            made.append(dev)
    munge_pid = _start_munge()
    conf = _write_conf(tmp, node)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(conf, node, env)
    try:
        subprocess.run(["slurmctld", "-f", str(conf), "-c", "-i"], env=env, check=True,
                       timeout=60)
        subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True, timeout=60)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            log = (tmp / "log/slurmd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"SLURM node is {state!r}, not idle; slurmd log:\n{log}")
        yield cluster
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        _wait_for_steps(tmp)
        _stop(_pid(tmp / "slurmd.pid"))
        _stop(_pid(tmp / "slurmctld.pid"))
        for pid in _step_daemons(tmp):  # a step daemon that outlived its slurmd
            os.kill(pid, 9)
        _stop(munge_pid)
        for dev in made:
            dev.unlink(missing_ok=True)
