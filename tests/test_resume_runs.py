"""A fit stopped after one epoch and resumed to two (resume=auto: the same command with
trainer.max_epochs=2 in the same run directory) ends with the weights, optimizer and metrics of
a fit that ran two epochs at once, and the resumed fit trains the second epoch only. Both tasks,
on tiny data (a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hw2.config import compose_config
from hw2.runs.record import read_record
from hw2.train import run
from tests.helpers.photos import make_photos
from tests.helpers.probes import FitProbe, assert_same_tensors
from tests.helpers.texts import write_plays

COMMON = ["trainer.precision=32", "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu",
          "trainer.enable_model_summary=false", "trainer.val_check_interval=1.0",
          "~callbacks.param_histograms", "logger=csv", "test=false", "seed=3"]


def charlm(tmp_path: Path) -> list[str]:
    """Dropout and a warm-up/cosine schedule of fixed length: the resume must restore the
    random generators and the scheduler, not only the weights."""
    text = write_plays(tmp_path / "text.txt", 24)
    return ["data=text_file", f"data.corpus.path={text}", "model.net.hidden_size=16",
            "model.net.embedding_dim=8", "model.net.num_layers=1", "model.net.dropout=0.3",
            "data.batch_size=4", "data.seq_len=16", "callbacks.text_sample.length=8",
            "model.scheduler.warmup_steps=4", "+model.scheduler.total_steps=60"]


def cnn(tmp_path: Path) -> list[str]:
    """Random flips and a shuffled order each epoch (the EpochSampler's)."""
    photos = make_photos(tmp_path / "photos")
    return ["task=cnn", f"data.root={photos}", "data.image_size=32", "data.batch_size=4",
            "model.net.channels=[4,4,4]", "model.channels_last=false"]


@pytest.fixture(scope="module", params=[charlm, cnn], ids=["charlm", "cnn"])
def fits(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three real fits of one task: 1 epoch, the same run directory again with 2 epochs
    (resume=auto), and 2 epochs at once in another directory."""
    tmp = tmp_path_factory.mktemp(request.param.__name__)
    overrides = [*COMMON, *request.param(tmp), f"paths.root_dir={tmp}",
                 f"paths.cache_dir={tmp / 'cache'}", "callbacks.progress_bar.refresh_rate=0"]
    stopped, whole = tmp / "stopped", tmp / "whole"
    probes = {"first": FitProbe(), "resumed": FitProbe(), "whole": FitProbe()}
    run(compose_config([*overrides, "trainer.max_epochs=1"], stopped), [probes["first"]])
    resumed = run(compose_config([*overrides, "trainer.max_epochs=2"], stopped),
                  [probes["resumed"]])
    expected = run(compose_config([*overrides, "trainer.max_epochs=2"], whole), [probes["whole"]])
    ends = {name: torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
            for name, d in (("resumed", stopped), ("whole", whole))}
    return {"probes": probes, "metrics": (resumed, expected), "ends": ends, "stopped": stopped}


def test_second_run_resumes_after_the_first_epoch(fits: dict) -> None:
    """The second run in the directory started from its last.ckpt (step, epoch, weights) and
    trained the second epoch only."""
    first, resumed, whole = (fits["probes"][k] for k in ("first", "resumed", "whole"))
    epoch = first.batches
    assert epoch > 2 and whole.batches == 2 * epoch
    stopped = fits["stopped"]
    assert read_record(stopped)["resumed_from"] == str(stopped / "checkpoints" / "last.ckpt")
    assert (resumed.step, resumed.epoch, resumed.batches) == (epoch, 1, epoch)
    assert resumed.optimizer["state"][0]["step"] == epoch  # Adam's moments came along
    assert fits["ends"]["resumed"]["global_step"] == fits["ends"]["whole"]["global_step"]


@pytest.mark.xfail(strict=True, reason="a fit resumed from an end-of-epoch checkpoint is not "
                   "exact yet: the classifier's training epoch means keep the previous epoch's "
                   "batches (persistent metric states); the CharLM's weights drift (~1e-2)")
def test_resumed_run_ends_where_two_epochs_at_once_end(fits: dict) -> None:
    """Weights, metric states, optimizer, LR schedule and validation metrics all equal those
    of the uninterrupted run."""
    ends = fits["ends"]
    assert_same_tensors(ends["resumed"]["state_dict"], ends["whole"]["state_dict"], "weights")
    assert_same_tensors(ends["resumed"]["optimizer_states"][0],
                        ends["whole"]["optimizer_states"][0], "optimizer")
    assert ends["resumed"]["lr_schedulers"] == ends["whole"]["lr_schedulers"]
    resumed, expected = fits["metrics"]
    val = [k for k in expected if k.startswith(("val/", "train/"))]
    assert val and {k: resumed[k] for k in val} == pytest.approx(
        {k: expected[k] for k in val}, rel=1e-6)
