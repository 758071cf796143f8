"""run.json says which code ran: the commit and dirty flag of a git repository made here, the
diff of a dirty tree beside it, earlier attempts' code kept, and no failure outside a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hw2.runs.provenance import code_identities, commit_label, git_state, provenance


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit of a tiny script."""
    repo = tmp_path / "src"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("print('lr = 0.1')\n")
    git(repo, "add", "train.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return repo


def test_clean_then_dirty_tree(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    clean = provenance(run_dir, "cpu", source_dir=repo)
    assert clean["git"] == {"commit": head, "dirty": False}
    assert not (run_dir / "git.diff").exists()
    assert commit_label(clean) == head[:7]
    assert "torch" in clean["versions"] and "pytorch-lightning" in clean["versions"]
    assert clean["device_name"]

    (repo / "train.py").write_text("print('lr = 0.2')\n")  # an uncommitted change
    (repo / "notes.txt").write_text("untracked files do not count\n")
    dirty = provenance(run_dir, "cpu", previous=clean, source_dir=repo)
    assert dirty["git"]["commit"] == head and dirty["git"]["dirty"] is True
    assert commit_label(dirty) == head[:7] + "+dirty"
    diff = (run_dir / "git.diff").read_text()
    assert "-print('lr = 0.1')" in diff and "+print('lr = 0.2')" in diff
    assert dirty["git"]["diff"] == "git.diff"
    # the first attempt ran other code: kept, and the run counts two code states
    assert dirty["git_earlier"] == [clean["git"]]
    assert len(code_identities(dirty)) == 2


def test_a_later_attempt_keeps_the_earlier_diff(repo: Path, tmp_path: Path) -> None:
    (repo / "train.py").write_text("print('lr = 0.2')\n")
    first = provenance(tmp_path, "cpu", source_dir=repo)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "lr 0.2")
    second = provenance(tmp_path, "cpu", previous=first, source_dir=repo)
    assert second["git"] == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    assert second["git_earlier"][0]["diff"] == "git.earlier1.diff"
    assert "+print('lr = 0.2')" in (tmp_path / "git.earlier1.diff").read_text()
    assert not (tmp_path / "git.diff").exists()


def test_outside_a_checkout_says_so(tmp_path: Path) -> None:
    state, diff = git_state(tmp_path)
    assert state["commit"] is None and "not a git checkout" in state["git"] and diff is None
    assert commit_label(provenance(tmp_path, "cpu", source_dir=tmp_path)) is None
