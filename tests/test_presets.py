"""Every `experiment` and `hparams_search` preset, shrunk to tiny generated data and a tiny
network: each builds its data, model, callbacks and trainer (fast), and each trains a few steps
through `hw2.train.run`, the searches through `python train.py` with two trials (slow). The
presets are read from conf/, so a new one is covered without editing this file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from hw2.config import compose_config
from hw2.runs.record import read_record
from hw2.train import instantiate_group, run
from hw2.utils.runtime import fast_precision
from tests.helpers.paths import CONF, ROOT
from tests.helpers.photos import CLASSES, make_photos
from tests.helpers.texts import write_plays

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
PRESETS = [("experiment", n) for n in EXPERIMENTS] + [("hparams_search", n) for n in SEARCHES]
STEPS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_data")
    return {"text": write_plays(root / "plays.txt", 40), "photos": make_photos(root / "photos")}


def shrink(preset: DictConfig, tiny: dict[str, Path]) -> list[str]:
    """Overrides that keep the preset's choices (cell, callbacks, augmentation, schedule, ...)
    but run it on tiny data with a tiny network for STEPS steps on the CPU."""
    out = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=1",
           f"++trainer.max_steps={STEPS}", f"++trainer.limit_train_batches={STEPS}",
           "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2",
           "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0",
           "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
           "callbacks.progress_bar.refresh_rate=0", "logger=csv"]
    if preset.task_name == "charlm":
        return [*out, "data=text_file", f"data.corpus.path={tiny['text']}",
                "data.corpus.test_fraction=0.2", "data.batch_size=2", "data.seq_len=8",
                "data.eval_batch_size=2", "model.net.hidden_size=8", "model.net.embedding_dim=8",
                "callbacks.text_sample.length=8"]
    data = preset.data
    out += [f"data.root={tiny['photos']}", "data.image_size=32", "data.batch_size=4",
            "data.num_workers=0"]
    if data.get("resize") is not None:
        out.append("data.resize=32")
    if OmegaConf.is_list(data.get("eval_resize")):
        out.append("data.eval_resize=[32,40]")
    elif data.get("eval_resize") is not None:
        out.append("data.eval_resize=40")
    if "channels" in preset.model.net:
        out.append(f"model.net.channels=[{','.join('4' * len(preset.model.net.channels))}]")
    return out


def preset_overrides(group: str, name: str, tiny: dict[str, Path], tmp: Path) -> list[str]:
    base = [f"{group}={name}", f"paths.root_dir={tmp}", f"paths.cache_dir={tmp / 'cache'}"]
    return [*base, *shrink(compose_config(base, tmp / "run"), tiny)]


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every scalar a preset file sets (not its defaults or hydra)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k not in ("defaults", "hydra"):
                out |= leaves(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: node}


def test_every_preset_file_is_found() -> None:
    assert {"charlm_recipe", "charlm_gpu", "cnn_recipe"} <= set(EXPERIMENTS)
    assert {"charlm_optuna", "cnn_optuna"} <= set(SEARCHES)


@pytest.mark.parametrize(("group", "name"), PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_preset_builds_on_tiny_data(group: str, name: str, tiny: dict[str, Path],
                                    tmp_path: Path) -> None:
    """Shrunk, the preset still says what its file says (every key the shrink leaves alone),
    reads the tiny data, and builds its data module, model, callbacks and trainer."""
    overrides = preset_overrides(group, name, tiny, tmp_path)
    cfg = compose_config(overrides, tmp_path / "run")
    shrunk = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
    for key, value in leaves(own).items():
        if not any(key == s or key.startswith(f"{s}.") for s in shrunk):
            assert OmegaConf.select(cfg, key) == value, f"{group}={name}: {key}"
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    kwargs = datamodule.model_kwargs()
    if cfg.task_name == "charlm":
        assert set(datamodule.vocab.chars) == set(tiny["text"].read_text())
    else:
        assert kwargs["class_names"] == sorted(CLASSES)  # class-per-folder: sorted, as ImageFolder
    model = instantiate(cfg.model, **kwargs, _convert_="all")
    assert sum(p.numel() for p in model.parameters()) < 20_000  # the tiny network
    with open_dict(cfg):  # as hw2.train.run resolves it
        cfg.trainer.precision = fast_precision("cpu") if cfg.trainer.precision == "auto" else (
            cfg.trainer.precision)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=False,
                          _convert_="all")
    assert trainer.max_steps == STEPS and trainer.accelerator.__class__.__name__ == "CPUAccelerator"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_few_steps(name: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_config(preset_overrides("experiment", name, tiny, tmp_path), tmp_path / "run")
    metrics = run(cfg)
    assert metrics["trainer/global_step"] == STEPS
    assert read_record(tmp_path / "run")["status"] == "finished"
    tested = [v for k, v in metrics.items() if k.startswith("test/")]
    assert tested and all(math.isfinite(v) for v in tested), metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", SEARCHES)
def test_search_runs_two_trials(name: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    """`python train.py hparams_search=<name>` (the preset is a multirun) with two trials:
    both finish and the study records each run's optimised metric."""
    sweep_dir = tmp_path / "search"
    cmd = [sys.executable, "train.py", *preset_overrides("hparams_search", name, tiny, tmp_path),
           "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    metric = compose_config([f"hparams_search={name}"], tmp_path / "x").optimized_metric
    trials = json.loads((sweep_dir / "optuna_study.json").read_text())["trials"]
    assert len(trials) == 2
    for trial in trials:
        record = read_record(sweep_dir / str(trial["number"]))
        assert record["status"] == "finished"
        assert trial["value"] == pytest.approx(record["metrics"][metric])
