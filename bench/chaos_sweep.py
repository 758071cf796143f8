"""Chaos at scale: a sweep of many tiny CharLM jobs on 4 fake devices, SIGKILLed at random
while it runs, re-run with the same command until it exits 0; nothing may be lost.

    python bench/chaos_sweep.py                          # 64 jobs, 8 job kills, 2 sweep kills
    python bench/chaos_sweep.py --jobs 12 --kills 3      # the slow test's size
    python bench/chaos_sweep.py --reference 16           # compare only jobs 0..15 (faster)

The sweep is `python train.py -m launcher=local_gpus gpu_pool=[0,1,2,3]
trainer.accelerator=cpu hydra.launcher.n_jobs=4 trainer.deterministic=true seed=range(0,N)`:
each job trains a tiny CharLM for `--steps` steps on a generated text in a child process of a
joblib worker, saving last.ckpt every `--steps/4` steps. While it runs the driver

- SIGKILLs `--kills` random training child processes that have recorded their attempt as
  running (a job killed outright: the worker marks it, the sweep goes on and exits non-zero
  at its end);
- SIGKILLs the sweep itself twice: once its whole process group (a crash of the machine or the
  allocation: sweep, workers and children die together), once the sweep process alone (the OOM
  killer's choice: its workers and training children live on as orphans). After the latter the
  same command is started again at once while the orphans still train, as a user would: their
  run-directory locks make the re-run leave those jobs alone; the driver then SIGKILLs the
  orphans (their process group), since nothing else would stop them;
- re-runs the same command (same `hydra.sweep.dir`) whenever the sweep ends, until it exits 0.

Then it checks, from the jobs' own run.json and the sweeps' output: every job finished; its
final metrics equal those of an uninterrupted reference sweep (`--reference` jobs of the same
command, deterministic=true); each killed attempt was counted (`attempts`) and resumed; no job
ran to completion twice (each job printed its final `run directory:` line at most once, and
one killed between recording its end and printing it was skipped by a later run). It prints
jobs, kills, re-runs, wall times and what was lost, and exits 1 when anything was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 4


def read_record(job_dir: Path) -> dict | None:
    """The job's run.json (read here without importing hw2, which imports Lightning: the
    driver stays a light process beside the sweep)."""
    try:
        return json.loads((job_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tiny_text(path: Path, chars: int = 6000) -> Path:
    """A generated play (speaker lines, verse) of `chars` characters."""
    speakers = ["ROMEO", "JULIET", "MERCUTIO", "NURSE"]
    lines = ["But soft, what light through yonder window breaks?",
             "It is the east, and Juliet is the sun.", "A plague o' both your houses!",
             "Parting is such sweet sorrow.", "What's in a name? That which we call a rose"]
    body = "".join(f"{speakers[i % 4]}:\n{lines[(i * 3) % 5]}\n{lines[(i * 7 + 1) % 5]}\n\n"
                   for i in range(chars // 40 + 1))
    path.write_text(body[:chars], encoding="utf-8")
    return path


def sweep_cmd(sweep_dir: Path, jobs: int, work: Path, text: Path, steps: int) -> list[str]:
    return [sys.executable, "train.py", "-m", "launcher=local_gpus",
            f"gpu_pool=[{','.join(str(i) for i in range(DEVICES))}]", "trainer.accelerator=cpu",
            f"hydra.launcher.n_jobs={DEVICES}", "trainer.deterministic=true",
            "data=text_file", f"data.corpus.path={text}", "data.corpus.test_fraction=0.1",
            "model.net.hidden_size=8", "model.net.embedding_dim=4", "model.net.num_layers=1",
            "model.net.dropout=0", "data.batch_size=4", "data.seq_len=8",
            "trainer.max_epochs=1", f"+trainer.max_steps={steps}",
            f"trainer.val_check_interval={max(1, steps // 4)}", "++trainer.limit_val_batches=2",
            "++trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
            "trainer.precision=32-true", "callbacks.progress_bar.refresh_rate=0",
            "~callbacks.text_sample", "~callbacks.param_histograms", "logger=csv",
            "trainer.enable_model_summary=false", "tune_malloc=false",
            "hydra.callbacks.sweep_report.enabled=false",  # the report is not under test here
            "sample_at_end=null",  # nor the first run's closing sample
            f"paths.log_dir={work / 'logs'}", f"paths.cache_dir={work / 'cache'}",
            f"seed=range(0,{jobs})", f"hydra.sweep.dir={sweep_dir}"]


# ----- processes, from /proc (no psutil) ---------------------------------------------------------

def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (process group, state, command line) of every process of this machine."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(name)] = (int(fields[2]), fields[0], cmd)
    return out


def group_members(pgid: int) -> list[int]:
    return [pid for pid, (group, state, _) in processes().items()
            if group == pgid and state not in ("Z", "X")]


def training_children(pgid: int) -> dict[int, Path]:
    """Live training child processes of the sweep's process group -> their job directory (the
    run-directory lock file they hold open)."""
    out = {}
    for pid, (group, state, cmd) in processes().items():
        if group != pgid or state in ("Z", "X") or "_job_in_slot" not in cmd:
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.endswith("/.lock"):
                    out[pid] = Path(target).parent
        except OSError:
            continue
    return out


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` is dead (gone or a zombie): it writes nothing more."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)


def kill_group(pgid: int, timeout: float = 60.0) -> int:
    """SIGKILL every process of the group and wait until none is left; how many there were."""
    members = group_members(pgid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.time() + timeout
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.1)
    return len(members)


# ----- the sweeps ---------------------------------------------------------------------------------

def finished_jobs(sweep_dir: Path, jobs: int) -> int:
    return sum(1 for i in range(jobs)
               if (read_record(sweep_dir / str(i)) or {}).get("status") == "finished")


def reference(work: Path, jobs: int, text: Path, steps: int) -> tuple[dict[int, dict], float]:
    """The uninterrupted sweep: each job's final metrics, and its wall time."""
    sweep_dir = work / "reference"
    started = time.time()
    with open(work / "reference.log", "w") as log:
        code = subprocess.run(sweep_cmd(sweep_dir, jobs, work, text, steps), cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"the reference sweep failed (exit {code}): see {work / 'reference.log'}")
    metrics = {i: (read_record(sweep_dir / str(i)) or {}).get("metrics") for i in range(jobs)}
    return metrics, time.time() - started


def chaos(work: Path, jobs: int, kills: int, text: Path, steps: int, rng: random.Random,
          max_runs: int, orphan_grace: float) -> dict:
    sweep_dir = work / "chaos"
    cmd = sweep_cmd(sweep_dir, jobs, work, text, steps)
    # kills fire as the count of finished jobs passes thresholds: spread over the sweep
    child_at = sorted(rng.randrange(0, max(1, int(jobs * 0.85))) for _ in range(kills))
    sweep_at = [("group", int(jobs * 0.35)), ("parent", int(jobs * 0.65))]
    killed: list[dict] = []  # job kills: pid, job, attempts on record at the kill
    sweep_kills: list[str] = []
    orphans_killed = 0
    runs, logs = 0, []
    started = time.time()
    pending_orphans: tuple[int, float] | None = None  # (process group, kill after)
    while True:
        runs += 1
        if runs > max_runs:
            break
        logs.append(work / f"chaos_{runs}.log")
        with open(logs[-1], "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        pgid, we_killed = proc.pid, False
        while proc.poll() is None:
            if pending_orphans and time.time() >= pending_orphans[1]:
                orphans_killed += kill_group(pending_orphans[0])
                pending_orphans = None
            done = finished_jobs(sweep_dir, jobs)
            if child_at and done >= child_at[0]:
                # only children that recorded their attempt as running: a kill still in the
                # imports would test nothing (no attempt to count or resume)
                live = training_children(pgid)
                records = {pid: read_record(d) or {} for pid, d in live.items()}
                children = {pid: d for pid, d in live.items()
                            if records[pid].get("pid") == pid
                            and records[pid].get("status") == "running"}
                if children:
                    pid = rng.choice(sorted(children))
                    record = records[pid]
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid)
                    # a job killed after it recorded its end (while its report printed) is
                    # done: the next run skips it, so that kill needs no new attempt
                    after = read_record(children[pid]) or {}
                    ended = after.get("pid") == pid and after.get("status") == "finished"
                    killed.append({"pid": pid, "job": children[pid].name, "attempts":
                                   record.get("attempts"),
                                   "after_its_end": ended})
                    child_at.pop(0)
            if sweep_at and done >= sweep_at[0][1] and training_children(pgid):
                how, _ = sweep_at.pop(0)
                sweep_kills.append(how)
                if how == "group":
                    kill_group(pgid)
                else:  # the sweep process alone: its workers and children are orphans now
                    os.kill(proc.pid, signal.SIGKILL)
                    pending_orphans = (pgid, time.time() + orphan_grace)
                proc.wait()
                we_killed = True
                break
            time.sleep(0.3)
        if pending_orphans and not we_killed:  # this run ended beside the orphans: end them
            time.sleep(max(0.0, pending_orphans[1] - time.time()))
            orphans_killed += kill_group(pending_orphans[0])
            pending_orphans = None
            continue  # the jobs they held are interrupted now: run again
        if not we_killed and proc.returncode == 0:
            break
    if pending_orphans:  # --max-runs reached right after a parent-only kill
        orphans_killed += kill_group(pending_orphans[0])
    return {"sweep_dir": sweep_dir, "killed": killed, "sweep_kills": sweep_kills,
            "orphans_killed": orphans_killed, "runs": runs, "logs": logs,
            "exit": proc.returncode, "wall_s": time.time() - started}


def check(result: dict, ref: dict[int, dict], jobs: int) -> dict:
    """What was lost: unfinished jobs, metrics unlike the reference, jobs run to completion
    twice, killed attempts not counted."""
    sweep_dir: Path = result["sweep_dir"]
    records = {i: read_record(sweep_dir / str(i)) or {} for i in range(jobs)}
    output = "".join(p.read_text(errors="replace") for p in result["logs"])
    completions = Counter(line.split("run directory: ", 1)[1].strip()
                          for line in output.splitlines() if line.startswith("run directory: "))
    unfinished = [i for i, r in records.items() if r.get("status") != "finished"]
    differ = [i for i in ref if records[i].get("metrics") != ref[i]]
    twice = [i for i in range(jobs) if completions[str(sweep_dir / str(i))] > 1]
    # a job killed after recording its end but before printing it is skipped by the next run
    skipped = {line.split(": ", 1)[1].strip() for line in output.splitlines()
               if line.startswith("skipped (finished before): ")}
    never_said = [i for i in range(jobs) if completions[str(sweep_dir / str(i))] == 0
                  and str(sweep_dir / str(i)) not in skipped]
    uncounted = [k for k in result["killed"] if k["attempts"] is not None
                 and not k["after_its_end"]
                 and records[int(k["job"])].get("attempts", 0) <= k["attempts"]]
    attempts = [int(r.get("attempts", 0)) for r in records.values()]
    return {"unfinished": unfinished, "metrics_differ": differ, "completed_twice": twice,
            "no_completion_line": never_said, "kills_not_counted": uncounted,
            "attempts_total": sum(attempts), "jobs_resumed": sum(a > 1 for a in attempts),
            "max_attempts": max(attempts, default=0),
            "left_out_busy": output.count("sweep job left out:"),
            "compared": len(ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--kills", type=int, default=8, help="training child processes killed")
    parser.add_argument("--reference", type=int, default=None,
                        help="jobs of the uninterrupted reference sweep (default: all)")
    parser.add_argument("--steps", type=int, default=32, help="training steps per job")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--max-runs", type=int, default=12, help="give up after this many runs")
    parser.add_argument("--orphan-grace", type=float, default=5.0,
                        help="seconds orphans of a killed sweep live on beside its re-run")
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (default: a new "
                        "one under /tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    work = args.work or Path(f"/tmp/chaos-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    text = tiny_text(work / "play.txt")
    n_ref = args.jobs if args.reference is None else min(args.reference, args.jobs)
    print(f"work dir {work}; reference sweep of {n_ref} job(s)...", flush=True)
    ref, ref_wall = reference(work, n_ref, text, args.steps)
    print(f"reference: {ref_wall:.0f} s; chaos sweep of {args.jobs} jobs...", flush=True)
    result = chaos(work, args.jobs, args.kills, text, args.steps, random.Random(args.seed),
                   args.max_runs, args.orphan_grace)
    lost = check(result, ref, args.jobs)
    summary = {
        "jobs": args.jobs, "job_kills": len(result["killed"]),
        "job_kills_after_its_end": sum(k["after_its_end"] for k in result["killed"]),
        "sweep_kills": result["sweep_kills"], "orphans_killed": result["orphans_killed"],
        "runs": result["runs"], "reruns": result["runs"] - 1, "last_exit": result["exit"],
        "chaos_wall_s": round(result["wall_s"], 1), "reference_wall_s": round(ref_wall, 1),
        **lost}
    bad = {k: summary[k] for k in ("unfinished", "metrics_differ", "completed_twice",
                                   "no_completion_line", "kills_not_counted") if summary[k]}
    print(f"\njobs {args.jobs} | job processes killed {summary['job_kills']} "
          f"({summary['job_kills_after_its_end']} after the job recorded its end) | sweep killed "
          f"{len(result['sweep_kills'])}x ({', '.join(result['sweep_kills']) or '-'}; "
          f"{summary['orphans_killed']} orphan process(es) killed after the parent-only kill)\n"
          f"runs of the sweep command {summary['runs']} (re-runs {summary['reruns']}), last "
          f"exit {summary['last_exit']}; jobs left out while an orphan held them "
          f"{summary['left_out_busy']}\n"
          f"attempts {summary['attempts_total']} for {args.jobs} jobs ({summary['jobs_resumed']} "
          f"resumed, at most {summary['max_attempts']} attempts)\n"
          f"wall time: chaos {summary['chaos_wall_s']:.0f} s, reference "
          f"{summary['reference_wall_s']:.0f} s\n"
          f"final metrics equal to the reference: "
          f"{summary['compared'] - len(lost['metrics_differ'])}/{summary['compared']} compared\n"
          f"lost: {bad or 'nothing'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    sys.exit(1 if bad or result["exit"] != 0 else 0)


if __name__ == "__main__":
    main()
