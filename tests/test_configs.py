"""Every config option composes, and its `_target_`s point at real classes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf

from hw2.config import compose_config
from tests.helpers.paths import CONF, ROOT


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def targets(node: object) -> list[str]:
    """All `_target_` values in a config tree."""
    found = []
    if isinstance(node, DictConfig):
        for key in node:
            if key == "_target_":
                found.append(node[key])
            else:
                found += targets(node._get_node(key))
    elif OmegaConf.is_list(node) and not node._is_none():
        for item in node:
            found += targets(item)
    return found


GROUP_OPTIONS = [(g, o) for g in ("task", "data", "model", "trainer", "logger", "callbacks",
                                  "debug", "experiment", "launcher", "hparams_search")
                 for o in options(g)]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in
                                                                   GROUP_OPTIONS])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    if (group, option) == ("launcher", "ray"):
        pytest.importorskip("hydra_plugins.hydra_ray_launcher",
                            reason='launcher=ray needs the ray extra: pip install -e ".[ray]"')
    overrides = [f"{group}={option}", f"paths.root_dir={tmp_path}"]
    if group in ("data", "model") and (option.startswith("food") or option in (
            "image_folder", "resnet18")):
        overrides.insert(0, "task=cnn")
    cfg = compose_config(overrides, tmp_path)
    base = compose_config([o for o in overrides if not o.startswith(f"{group}=")], tmp_path)
    if base.hydra.runtime.choices.get(group) != option:
        # a non-default option must change the config (an empty or ignored file would not)
        assert _plain(cfg) != _plain(base), f"{group}={option} changes nothing"
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if group == "experiment":  # every preset is a sweep: its swept keys exist in the config
        for key in cfg.hydra.sweeper.params or {}:
            assert OmegaConf.select(cfg, key, default="absent") != "absent", key
    if group == "hparams_search":
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.optimized_metric == f"best/{cfg.callbacks.model_checkpoint.monitor}"
    assert "_target_" in cfg.data and "_target_" in cfg.model
    for target in targets(cfg):
        try:
            get_class(target)
        except (ImportError, ValueError):
            get_method(target)  # functions such as warmup_cosine


def _plain(cfg: DictConfig) -> dict:
    return {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def test_default_is_charlm_on_embedded_plays(tmp_path: Path) -> None:
    cfg = compose_config([], tmp_path)
    assert cfg.task_name == "charlm"
    assert cfg.data.corpus._target_.endswith("IambicPlays")
    assert cfg.model.net.cell == "lstm" and cfg.trainer.precision == "auto"
    assert cfg.callbacks.model_checkpoint.monitor == "val/bpc"
    # `python train.py` is the short first run, ending with a sample
    assert cfg.hydra.runtime.choices.experiment == "charlm_first_run"
    assert (cfg.model.net.num_layers, cfg.model.net.hidden_size) == (2, 256)
    assert cfg.trainer.limit_train_batches == 0.5 and cfg.sample_at_end.prime == "ROMEO"


def test_full_size_plays_preset_is_the_earlier_default(tmp_path: Path) -> None:
    """experiment=charlm_plays: 2x512, 64 x 128, one whole epoch, four validations on all of
    the validation text; the first run's limits are gone, task=cnn has no first run."""
    cfg = compose_config(["experiment=charlm_plays"], tmp_path)
    net = cfg.model.net
    assert (net.num_layers, net.hidden_size, net.embedding_dim) == (2, 512, 128)
    assert (cfg.data.batch_size, cfg.data.seq_len) == (64, 128)
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.val_check_interval == 0.25
    assert "limit_train_batches" not in cfg.trainer and "limit_val_batches" not in cfg.trainer
    assert cfg.data.corpus._target_.endswith("IambicPlays")
    recipe = compose_config(["experiment=charlm_recipe"], tmp_path)  # presets keep their sizes
    assert recipe.model.net.hidden_size == 512 and "limit_train_batches" not in recipe.trainer
    cnn = compose_config(["task=cnn"], tmp_path)
    assert cnn.trainer.max_epochs == 10 and "limit_train_batches" not in cnn.trainer


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_override_reaches_the_network(cell: str, tmp_path: Path, small_text: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_config([f"model.net.cell={cell}", "data=text_file",
                          f"data.corpus.path={small_text}", "model.net.hidden_size=8",
                          "data.batch_size=2", "data.seq_len=8"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model, **dm.model_kwargs(), _convert_="all")
    assert model.net.rnn.mode == {"rnn": "RNN_TANH", "lstm": "LSTM", "gru": "GRU"}[cell]


def test_help_lists_groups() -> None:
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for group in ("task:", "data:", "model:", "trainer:", "logger:", "experiment:", "debug:"):
        assert group in out.stdout, group


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_bad_cell_name_is_a_short_error(tmp_path: Path, small_text: Path) -> None:
    out = subprocess.run([sys.executable, "train.py", "model.net.cell=transformer",
                          f"paths.root_dir={tmp_path}", "data=text_file",
                          f"data.corpus.path={small_text}", "data.batch_size=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "model.net.cell='transformer' is not a cell; choose one of ['gru', 'lstm', 'rnn']" in (
        out.stderr + out.stdout)


@pytest.mark.parametrize("preset", ["fdr", "default"])
def test_debug_presets_run(preset: str, tmp_path: Path, small_text: Path) -> None:
    from hw2.train import run

    cfg = compose_config([f"debug={preset}", "data=text_file", f"data.corpus.path={small_text}",
                          "data.corpus.test_fraction=0.1",
                          "model.net.hidden_size=16", "model.net.embedding_dim=8",
                          "data.batch_size=2",
                          "data.seq_len=16", f"paths.root_dir={tmp_path}",
                          "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    metrics = run(cfg)
    assert "train/bpc" in metrics
    ckpts = tmp_path / "run" / "checkpoints"
    if preset == "fdr":  # Lightning's fast_dev_run: one batch, nothing written
        assert metrics["trainer/global_step"] == 1
        assert not ckpts.exists() and "test/bpc" not in metrics
    else:  # a short real run: limit_train_batches=5, checkpoints and a test on the best one
        last = torch.load(ckpts / "last.ckpt", weights_only=True)
        assert last["global_step"] == 5 and "test/bpc" in metrics


@pytest.mark.parametrize("choice", ["task=charlm", "task=cnn", "experiment=charlm_recipe"])
def test_callbacks_none_drops_the_tasks_callbacks_and_checkpointing(choice: str, tmp_path: Path
                                                                    ) -> None:
    default = compose_config([choice], tmp_path)
    task_only = {"task=charlm": {"text_sample"}, "task=cnn": {"misclassified", "confusion_matrix"},
                 "experiment=charlm_recipe": {"text_sample", "weight_averaging"}}[choice]
    assert task_only <= set(default.callbacks)
    cfg = compose_config([choice, "callbacks=none"], tmp_path)  # the preset's EMA goes too
    assert len(cfg.callbacks) == 0 and cfg.trainer.enable_checkpointing is False
