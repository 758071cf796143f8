"""Where a run's code came from and what it ran on, for `run.json`: the git commit of the source
tree (and its uncommitted diff), the versions of hw2 and its main libraries, the command line,
the host and the device. A result can then be traced to the code that produced it, and a report
can tell when runs it compares were made by different code.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding hw2
DIFF_NAME = "git.diff"
PACKAGES = ("hw2", "torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf",
            "torchmetrics", "optuna", "mlflow", "wandb")
GIT_TIMEOUT_S = 10.0


def _git(source_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True, text=True,
                          check=True, timeout=GIT_TIMEOUT_S).stdout


def git_state(source_dir: str | os.PathLike = SOURCE_DIR) -> tuple[dict[str, Any], str | None]:
    """({commit, dirty, diff_sha1} or {commit: None, git: why}, the diff when dirty).

    Only a directory that is itself the root of a checkout counts (an installed package inside
    some other repository, e.g. a virtualenv in a project, is not that repository's code).
    `dirty` means tracked files differ from the commit (staged or not); untracked files are not
    looked at, which keeps the call fast on a tree full of logs.
    """
    source_dir = Path(source_dir)
    if not (source_dir / ".git").exists():
        return {"commit": None, "git": f"not a git checkout ({source_dir}): an installed "
                                       "package"}, None
    try:
        status = _git(source_dir, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
        commit = next((line.split()[2] for line in status.splitlines()
                       if line.startswith("# branch.oid")), None)
        if commit == "(initial)":
            commit = None
        dirty = any(not line.startswith("#") for line in status.splitlines())
        diff = _git(source_dir, "diff", "HEAD") if dirty and commit else None
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", None) or str(e)
        log.warning("git state of %s unknown: %s", source_dir, err.strip())
        return {"commit": None, "git": f"git failed: {err.strip()[:200]}"}, None
    state: dict[str, Any] = {"commit": commit, "dirty": dirty}
    if diff is not None:
        state["diff_sha1"] = hashlib.sha1(diff.encode()).hexdigest()[:12]
    return state, diff


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` (those not installed are left out)."""
    out = {}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(accelerator: str) -> str:
    """The GPU's name when the run uses CUDA, else the CPU model."""
    import torch  # here, not at the top: the report reads records without torch

    from hw2.utils.runtime import uses_cuda

    if uses_cuda(accelerator) and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return cpu_name()


def provenance(run_dir: str | os.PathLike, accelerator: str,
               previous: dict[str, Any] | None = None,
               source_dir: str | os.PathLike = SOURCE_DIR) -> dict[str, Any]:
    """The provenance fields of `run.json` for this attempt; a dirty tree's diff goes to
    `<run_dir>/git.diff`. When an earlier attempt of the run (record `previous`) ran other code,
    its git state is kept in `git_earlier` and its diff as `git.earlier<n>.diff`."""
    run_dir = Path(run_dir)
    state, diff = git_state(source_dir)
    earlier = list((previous or {}).get("git_earlier") or [])
    old = (previous or {}).get("git")
    if old and code_identity({"git": old}) != code_identity({"git": state}):
        old = dict(old)
        diff_path = run_dir / DIFF_NAME
        if old.get("diff") and diff_path.is_file():
            old["diff"] = f"git.earlier{len(earlier) + 1}.diff"
            diff_path.rename(run_dir / old["diff"])
        earlier.append(old)
    if diff is not None:
        (run_dir / DIFF_NAME).write_text(diff, encoding="utf-8")
        state["diff"] = DIFF_NAME
    out = {"git": state, "versions": versions(), "argv": list(sys.argv),
           "python": platform.python_version(), "device_name": device_name(accelerator)}
    if earlier:
        out["git_earlier"] = earlier
    return out


def commit_label(record: dict[str, Any] | None) -> str | None:
    """`1bdea77` / `1bdea77+dirty` for a record's git state; None when unknown."""
    git = (record or {}).get("git") or {}
    commit = git.get("commit")
    if not commit:
        return None
    return str(commit)[:7] + ("+dirty" if git.get("dirty") else "")


def code_identity(record: dict[str, Any] | None) -> tuple[str, str] | None:
    """(commit, diff hash) of a record's code: the same for runs made by the same code."""
    git = (record or {}).get("git") or {}
    if not git.get("commit"):
        return None
    return str(git["commit"]), str(git.get("diff_sha1") or "")


def code_identities(record: dict[str, Any] | None) -> set[tuple[str, str]]:
    """The code of every attempt of a run (a resumed run may have continued on other code)."""
    states = [(record or {}).get("git"), *((record or {}).get("git_earlier") or [])]
    return {i for s in states if (i := code_identity({"git": s})) is not None}
