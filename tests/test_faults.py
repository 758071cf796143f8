"""Fault drills on real `python train.py` processes: SIGKILL mid-epoch and resume (both tasks,
with validation and checkpoints inside the epoch), SIGKILL inside a checkpoint save, SIGTERM
(pre-emption), and a non-finite loss. Each resumed run must end exactly where an uninterrupted
run with the same seed ends (trainer.deterministic=true). Faults come from
`tests.helpers.faults.Fault`, added through the config like any callback."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw2.runs.record import read_record, status_of
from tests.helpers.drills import CHAR, curves, fault, run_dir, step_of, write_drill_text
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow

CNN = ["task=cnn", "data.image_size=32", "data.batch_size=4", "trainer.accelerator=cpu",
       "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=0.5",
       "model.l2=1e-3"]
COMMON = ["trainer.deterministic=true", "trainer.enable_model_summary=false",
          "callbacks.progress_bar.refresh_rate=0", "logger=many"]


def train(args: list[str], logs: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args, *COMMON, f"paths.log_dir={logs}",
                           f"run_name={name}"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


def metrics(path: Path) -> dict[str, float]:
    return json.loads((path / "run.json").read_text())["metrics"]


def no_temp_files(path: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in (path / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_drill_text(tmp_path_factory.mktemp("text") / "play.txt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x (12 train, 2 test) noisy 40x36 PNGs, left half darker (a flip changes them)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["bread", "egg", "soup"]):
        for split, n in (("train", 12), ("test", 2)):
            for i in range(n):
                pixels = rng.integers(0, 255, (36, 40, 3)).astype(np.uint8)
                pixels[..., c] = 200
                pixels[:, :20] //= 2
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


@pytest.fixture(scope="module")
def charlm_args(text: Path) -> list[str]:
    return [*CHAR, f"data.corpus.path={text}"]


@pytest.fixture(scope="module")
def charlm_full(charlm_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted CharLM run every drill is compared with."""
    logs = tmp_path_factory.mktemp("full")
    done = train(charlm_args, logs, "full")
    assert done.returncode == 0, done.stdout[-3000:]
    return run_dir(logs, "charlm", "full")


def assert_same_run(resumed: Path, full: Path) -> None:
    """Same final metrics and the same TensorBoard curves: every step once, same values."""
    assert metrics(resumed) == metrics(full)
    assert curves(resumed) == curves(full)
    record = read_record(resumed)
    assert record["status"] == "finished" and record["attempts"] == 2


def test_charlm_sigkill_mid_epoch_resumes_to_the_same_end(
        charlm_args: list[str], charlm_full: Path, tmp_path: Path) -> None:
    killed = train([*charlm_args, *fault("kill", at_step=34)], tmp_path, "cut")
    out = run_dir(tmp_path, "charlm", "cut")
    assert killed.returncode == -signal.SIGKILL
    assert status_of(read_record(out)) == "interrupted"
    saved = step_of(out / "checkpoints" / "last.ckpt")
    assert 25 < saved < 34  # validated and saved inside the second epoch, then killed
    resumed = train(charlm_args, tmp_path, "cut")  # the same command: resume=auto
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resume=auto: continuing this run" in resumed.stdout
    assert "dataloader is not resumable" not in resumed.stdout
    assert_same_run(out, charlm_full)
    assert (out / "csv" / "metrics.csv").read_text() == \
        (charlm_full / "csv" / "metrics.csv").read_text()


def test_cnn_sigkill_mid_epoch_resumes_to_the_same_end(photos: Path, tmp_path: Path) -> None:
    args = [*CNN, f"data.root={photos}"]
    full = train(args, tmp_path, "full")
    assert full.returncode == 0, full.stdout[-3000:]
    killed = train([*args, *fault("kill", at_step=14)], tmp_path, "cut")
    assert killed.returncode == -signal.SIGKILL
    out = run_dir(tmp_path, "cnn", "cut")
    assert step_of(out / "checkpoints" / "last.ckpt") == 12  # mid second epoch (8 per epoch)
    resumed = train(args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert_same_run(out, run_dir(tmp_path, "cnn", "full"))


def test_cnn_from_the_photo_cache_resumes_to_the_same_end(photos: Path, tmp_path: Path) -> None:
    """data.cache=true with random crops and colour jitter: the killed run's cache is reused
    and the resumed run trains on the same batches in the same order."""
    args = [*CNN, f"data.root={photos}", "data.cache=true", "data.augment=strong",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    full = train(args, tmp_path, "full")
    assert full.returncode == 0, full.stdout[-3000:]
    assert "building the photo cache" in full.stdout
    plain = train([*CNN, f"data.root={photos}", "data.augment=strong"], tmp_path, "plain")
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert curves(run_dir(tmp_path, "cnn", "full"))["train/loss"] != \
        curves(run_dir(tmp_path, "cnn", "plain"))["train/loss"]  # the cache path did train
    killed = train([*args, *fault("kill", at_step=14)], tmp_path, "cut")
    assert killed.returncode == -signal.SIGKILL
    resumed = train(args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "building the photo cache" not in killed.stdout + resumed.stdout
    assert_same_run(run_dir(tmp_path, "cnn", "cut"), run_dir(tmp_path, "cnn", "full"))


def test_weight_averaging_resumes_to_the_same_end(charlm_args: list[str], charlm_full: Path,
                                                  tmp_path: Path) -> None:
    """With Lightning's EMAWeightAveraging (as experiment=charlm_recipe uses it) validation and
    checkpoints hold the average, and a killed run resumes both the weights and their average."""
    args = [*charlm_args, "+callbacks.weight_averaging.decay=0.9",
            "+callbacks.weight_averaging._target_=pytorch_lightning.callbacks.EMAWeightAveraging"]
    full = train(args, tmp_path, "full")
    assert full.returncode == 0, full.stdout[-3000:]
    averaged = run_dir(tmp_path, "charlm", "full")
    assert metrics(averaged)["val/bpc"] != metrics(charlm_full)["val/bpc"]  # the average is scored
    last = torch.load(averaged / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    weight = "net.rnn.weight_hh_l0"
    assert not torch.equal(last["state_dict"][weight], last["current_model_state"][weight])
    killed = train([*args, *fault("kill", at_step=34)], tmp_path, "cut")
    assert killed.returncode == -signal.SIGKILL
    resumed = train(args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert_same_run(run_dir(tmp_path, "charlm", "cut"), averaged)


def test_shifted_streams_resume_to_the_same_end(charlm_args: list[str], charlm_full: Path,
                                                tmp_path: Path) -> None:
    """data.shift_streams cuts each epoch's streams at an offset from (seed, epoch): a run
    killed in its second epoch resumes with that epoch's streams, not the first epoch's."""
    args = [*charlm_args, "data.shift_streams=true"]
    full = train(args, tmp_path, "full")
    assert full.returncode == 0, full.stdout[-3000:]
    shifted = run_dir(tmp_path, "charlm", "full")
    assert curves(shifted)["train/loss"] != curves(charlm_full)["train/loss"]
    killed = train([*args, *fault("kill", at_step=34)], tmp_path, "cut")
    assert killed.returncode == -signal.SIGKILL
    resumed = train(args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert_same_run(run_dir(tmp_path, "charlm", "cut"), shifted)


def test_sigkill_inside_a_checkpoint_save_keeps_the_previous_one(
        charlm_args: list[str], charlm_full: Path, tmp_path: Path) -> None:
    """Killed while writing the 4th checkpoint (last.ckpt at the 2nd validation)."""
    killed = train([*charlm_args, *fault("save", at_save=4)], tmp_path, "cut")
    assert killed.returncode == -signal.SIGKILL
    out = run_dir(tmp_path, "charlm", "cut")
    temps = [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].name.startswith(".last.ckpt.pid")  # died mid-write
    assert step_of(out / "checkpoints" / "last.ckpt") == 5  # the previous save, whole
    resumed = train(charlm_args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "removed 1 unfinished checkpoint file" in resumed.stdout
    assert no_temp_files(out)
    assert metrics(out) == metrics(charlm_full)


def test_sigterm_saves_exits_143_and_resumes(charlm_args: list[str], charlm_full: Path,
                                             tmp_path: Path) -> None:
    term = train([*charlm_args, *fault("term", at_step=9)], tmp_path, "cut")
    out = run_dir(tmp_path, "charlm", "cut")
    assert term.returncode == 143, term.stdout[-3000:]
    assert "interrupted by SIGTERM at step 9" in term.stdout and "last.ckpt" in term.stdout
    record = read_record(out)
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    assert step_of(out / "checkpoints" / "last.ckpt") == 9  # saved on the way out
    resumed = train(charlm_args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert_same_run(out, charlm_full)


@pytest.mark.parametrize("task", ["charlm", "cnn"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
        task: str, charlm_args: list[str], photos: Path, tmp_path: Path) -> None:
    """The weights turn NaN at the second validation's step: that validation must not save
    them, and the next step's NaN loss stops the run naming the step and the checkpoint."""
    args = charlm_args if task == "charlm" else [*CNN, f"data.root={photos}"]
    at = 12 if task == "charlm" else 8
    done = train([*args, *fault("nan_weights", at_step=at)], tmp_path, "nan")
    out = run_dir(tmp_path, task, "nan")
    assert done.returncode == 1
    last = out / "checkpoints" / "last.ckpt"
    message = (f"non-finite training loss (nan) at step {at}", f"last good checkpoint: {last}")
    assert all(m in done.stdout for m in message), done.stdout[-3000:]
    record = read_record(out)
    assert record["status"] == "failed" and all(m in record["error"] for m in message)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] < at
    assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values())
    assert no_temp_files(out)


def test_skip_nonfinite_skips_the_bad_step_and_finishes(photos: Path, tmp_path: Path) -> None:
    args = [*CNN, f"data.root={photos}", "model.skip_nonfinite=true"]
    done = train([*args, *fault("nan_loss", at_step=3)], tmp_path, "skip")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "non-finite training loss (nan) at step 3 (epoch 0, batch 3): step skipped" \
        in done.stdout
    out = run_dir(tmp_path, "cnn", "skip")
    assert read_record(out)["status"] == "finished"
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 16  # Lightning counts the skipped batch's optimiser call
    assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values())
    assert math.isfinite(metrics(out)["train/loss"])
