"""Odd inputs a new user or a long sweep meets: corrupt images, corpora and checkpoints, the
other task's checkpoint, another vocabulary or class list, a malicious pickle, unwritable or
full directories, a wrong tiny shakespeare. Each ends in a short message naming the file and
what to do, and leaves nothing behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from hw2.config import compose_config
from hw2.data.corpus import IambicPlays, TinyShakespeare
from hw2.data.vocab import Vocab
from hw2.inference import predict
from hw2.models.charlm import CharLM
from hw2.models.classifier import ImageClassifier
from hw2.runs.checkpoints import CheckpointError, load_module
from hw2.train import run
from hw2.utils.fileio import UnwritablePathError, atomic_write_bytes, writable_dir
from tests.helpers.paths import ROOT

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 40
CLASSES = ["bread", "egg", "soup"]


def save_ckpt(model: pl.LightningModule, path: Path) -> Path:
    """A checkpoint as train.py writes it (hyperparameters + weights), without training."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def charlm_ckpt(path: Path, text: str = TEXT) -> Path:
    net = {"_target_": "hw2.models.char_rnn.CharRNN", "hidden_size": 8, "embedding_dim": 4,
           "num_layers": 1}
    return save_ckpt(CharLM(vocab=Vocab.from_text(text).state_dict(), net=net), path)


def cnn_ckpt(path: Path, classes: list[str] = CLASSES, image_size: int = 16) -> Path:
    import functools

    from hw2.models.food_cnn import FoodCNN

    net = functools.partial(FoodCNN, channels=[4, 4, 4], kernel_size=3)
    return save_ckpt(ImageClassifier(net, num_classes=len(classes), class_names=classes,
                                     image_size=image_size, channels_last=False), path)


def photos(root: Path, classes: list[str] = CLASSES, size: int = 20) -> Path:
    for c, name in enumerate(classes):
        for split in ("train", "test"):
            for i in range(2):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (size, size), (90 * c, 40 * i, 100)).save(path)
    return root


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----- checkpoints ----------------------------------------------------------------------------

def test_checkpoint_round_trip_is_self_describing(tmp_path: Path) -> None:
    """Network config, class names and preprocessing are plain data: weights_only reads them."""
    ckpt = cnn_ckpt(tmp_path / "cnn.ckpt")
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["net"] == {"_target_": "hw2.models.food_cnn.FoodCNN", "channels": [4, 4, 4],
                         "kernel_size": 3}
    assert hp["class_names"] == CLASSES and hp["image_size"] == 16 and hp["mean"] == [0.5] * 3
    model = load_module(ckpt, ImageClassifier)
    assert model.net.conv1.out_channels == 4 and model.class_names == CLASSES
    assert not model.training


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty"])
def test_unreadable_checkpoint(tmp_path: Path, kind: str) -> None:
    good = charlm_ckpt(tmp_path / "good.ckpt").read_bytes()
    data = {"truncated": good[: len(good) // 2], "random bytes": os.urandom(4096),
            "empty": b""}[kind]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"{bad} is not a readable checkpoint"):
        load_module(bad, CharLM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "good.ckpt"]


class _RunsCode:
    """Unpickling this runs `exec`: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": _RunsCode(marker)}}, evil)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil.ckpt.*exec"):
        load_module(evil, CharLM)
    assert not marker.exists()


@pytest.mark.slow
def test_malicious_pickle_through_generate_cli(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": _RunsCode(marker)}}, evil)
    out = subprocess.run([sys.executable, "generate.py", f"ckpt={evil}", "length=5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: refused to load")
    assert "Traceback" not in out.stderr and not marker.exists()


def test_checkpoint_naming_a_foreign_network_is_refused(tmp_path: Path) -> None:
    """A `_target_` in a checkpoint is data: only hw2's networks are ever built from it."""
    ckpt = cnn_ckpt(tmp_path / "cnn.ckpt")
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["net"] = {"_target_": "os.system", "command": "touch pwned"}
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=r"'os.system' is not a network of hw2.models"):
        load_module(ckpt, ImageClassifier)
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()


def test_weights_of_other_shapes(tmp_path: Path) -> None:
    ckpt = charlm_ckpt(tmp_path / "lm.ckpt")
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["net"]["hidden_size"] = 16  # hyperparameters no longer match weights
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"weights do not fit the network .*size mismatch"):
        load_module(ckpt, CharLM)


def test_other_tasks_checkpoint_fails_before_the_data_is_read(
        tmp_path: Path, compose_cfg: Callable) -> None:
    ckpt = cnn_ckpt(tmp_path / "cnn.ckpt")
    cfg = compose_cfg(["data=text_file", f"data.corpus.path={tmp_path / 'absent.txt'}",
                       "train=false", f"ckpt_path={ckpt}"])
    # the corpus does not even exist: the checkpoint's task is checked first
    with pytest.raises(CheckpointError, match=r"is of ImageClassifier \(task=cnn, 3 classes\), "
                                              r"not of CharLM \(task=charlm\)"):
        run(cfg)
    with pytest.raises(CheckpointError, match=r"is of CharLM \(task=charlm, \d+ characters\), "
                                              r"not of ImageClassifier"):
        load_module(charlm_ckpt(tmp_path / "lm.ckpt"), ImageClassifier)


def test_mismatched_vocabulary_names_both_sides(tmp_path: Path, compose_cfg: Callable) -> None:
    ckpt = charlm_ckpt(tmp_path / "lm.ckpt", text="abcdefgh " * 10)
    corpus = tmp_path / "other.txt"
    corpus.write_text(TEXT)
    cfg = compose_cfg(["data=text_file", f"data.corpus.path={corpus}", "data.batch_size=2",
                       "data.seq_len=8", "data.corpus.test_fraction=0.1", "train=false",
                       f"ckpt_path={ckpt}"])
    n_data = len(set(TEXT[: int(len(TEXT) * 0.8)]))
    with pytest.raises(CheckpointError, match=rf"{ckpt} has a vocabulary of 9 characters .*, the "
                                              rf"data \(TextFiles\) has {n_data} .*only in the "
                                              r"checkpoint: 'c', only in the data: '\\n,:"):
        run(cfg)


def test_resuming_on_other_data_names_both_sides(tmp_path: Path, compose_cfg: Callable) -> None:
    """A fit resumed from a checkpoint of another corpus (or the other task) stops before
    training, naming both sides, rather than loading weights onto the wrong characters."""
    ckpt = charlm_ckpt(tmp_path / "lm.ckpt", text="abcdefgh " * 10)
    corpus = tmp_path / "other.txt"
    corpus.write_text(TEXT)
    cfg = compose_cfg(["data=text_file", f"data.corpus.path={corpus}", "data.batch_size=2",
                       "data.seq_len=8", f"ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match=rf"{ckpt} has a vocabulary of 9 characters"):
        run(cfg)
    cfg = compose_cfg(["task=cnn", f"data.root={tmp_path / 'absent'}", f"ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match=r"is of CharLM .*not of ImageClassifier"):
        run(cfg)  # the task is checked before the (absent) photos are looked for


def test_test_only_needs_a_test_split(tmp_path: Path, compose_cfg: Callable) -> None:
    corpus = tmp_path / "t.txt"
    corpus.write_text(TEXT)
    cfg = compose_cfg(["data=text_file", f"data.corpus.path={corpus}", "train=false",
                       f"ckpt_path={charlm_ckpt(tmp_path / 'lm.ckpt')}", "data.batch_size=2",
                       "data.seq_len=8"])
    with pytest.raises(ValueError, match=r"has none: use a corpus with one .*test_fraction"):
        run(cfg)


def test_mismatched_class_list_names_both_sides(tmp_path: Path, compose_cfg: Callable) -> None:
    ckpt = cnn_ckpt(tmp_path / "cnn.ckpt")  # bread, egg, soup
    data = photos(tmp_path / "photos", ["bread", "egg", "rice"])  # same count, other names
    cfg = compose_cfg(["task=cnn", f"data.root={data}", "data.image_size=16", "train=false",
                       f"ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match=r"has 3 classes \(bread, egg, soup\), the data "
                                              r"under .*photos has 3 \(bread, egg, rice\)"):
        run(cfg)
    cfg = compose_cfg(["task=cnn", f"data.root={photos(tmp_path / 'ok')}", "data.image_size=32",
                       "train=false", f"ckpt_path={ckpt}"], output_dir=tmp_path / "run2")
    with pytest.raises(CheckpointError, match=r"trained on 16 px .* set data.image_size=16"):
        run(cfg)


# ----- images ---------------------------------------------------------------------------------

def test_predict_names_a_corrupt_photo_and_classifies_the_rest(tmp_path: Path) -> None:
    ckpt = cnn_ckpt(tmp_path / "cnn.ckpt")
    folder = photos(tmp_path / "photos") / "test"
    truncated = folder / "egg" / "broken.png"
    truncated.write_bytes((folder / "egg" / "0.png").read_bytes()[:40])
    results = dict(predict(ckpt, folder, top_k=2))
    assert len(results) == 7
    assert "cannot decode" in results[truncated] and "broken.png" in results[truncated]
    good = results[folder / "bread" / "0.png"]
    assert [name for name, _ in good] != [] and len(good) == 2
    assert {name for name, _ in good} <= set(CLASSES) and good[0][1] >= good[1][1]
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        list(predict(ckpt, tmp_path / "nowhere"))


# ----- corpora --------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "match"), [(b"", "is empty"),
                                                (b"caf\xe9 \xff", "is not UTF-8 text")])
def test_bad_corpus_through_a_run(tmp_path: Path, compose_cfg: Callable, content: bytes,
                                  match: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    cfg = compose_cfg(["data=text_file", f"data.corpus.path={corpus}"])
    with pytest.raises(ValueError, match=rf"corpus file {corpus} {match}"):
        run(cfg)
    # the record says failed, nothing else (beside the run directory's lock file, and the
    # diff of the code when it ran from a dirty tree)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    diff = {"git.diff"} if (record.get("git") or {}).get("dirty") else set()
    assert listing(tmp_path / "run") == {"run.json", ".lock", *diff}
    assert record["status"] == "failed"


def test_tinyshakespeare_with_a_wrong_hash(tmp_path: Path) -> None:
    local = tmp_path / "tinyshakespeare.txt"
    local.write_text("First Citizen:\nnot quite the real thing\n")
    found = hashlib.sha256(local.read_bytes()).hexdigest()
    ts = TinyShakespeare(str(tmp_path), str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=rf"{local} is not tiny shakespeare: sha256 {found}, "
                                         rf"expected {ts.sha256}"):
        ts.load()
    assert listing(tmp_path) == {"tinyshakespeare.txt"}


# ----- unwritable and full directories ----------------------------------------------------------
# Tests run as root, which ignores permission bits (chmod does not stop it). A path under a
# regular FILE fails for everyone (ENOTDIR), so that is the unwritable directory here.

def test_unwritable_cache_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    cache = blocker / "cache"
    with pytest.raises(UnwritablePathError, match=rf"cannot write {cache}.*Not a directory "
                                                  rf"\({blocker} is a file\).*paths.cache_dir"):
        IambicPlays(str(cache)).load()
    ts = TinyShakespeare(None, str(cache), url="http://127.0.0.1:9/x")  # no download tried
    with pytest.raises(UnwritablePathError, match=rf"cannot write {cache}"):
        ts.load()
    assert listing(tmp_path) == {"a_file"}


def test_unwritable_output_dir(tmp_path: Path, small_text: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    cfg = compose_config([f"paths.root_dir={tmp_path}", "data=text_file",
                          f"data.corpus.path={small_text}"], blocker / "run")
    with pytest.raises(UnwritablePathError, match=rf"cannot write {blocker / 'run'}"):
        run(cfg)


def test_unwritable_log_dir_from_the_command_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    out = subprocess.run([sys.executable, "train.py", f"paths.log_dir={blocker}/logs"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: cannot write {blocker}/logs/charlm/runs/")
    assert "Traceback" not in out.stderr and "paths.log_dir" in out.stderr
    assert listing(tmp_path) == {"a_file"}


def test_torchrun_without_a_shared_run_name(tmp_path: Path) -> None:
    """A rank of a torchrun launch (its environment) without --rdzv-id or run_name=: each rank
    would name its own run directory after its start time; it stops before making one."""
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "RANK": "1",
           "LOCAL_RANK": "1"}
    out = subprocess.run([sys.executable, "train.py", f"paths.root_dir={tmp_path}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: torchrun started this run's ranks without a shared "
                                 "name") and "run_name=<name>" in out.stderr
    assert listing(tmp_path) == set()


def test_full_disk_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "run.json"
    atomic_write_bytes(target, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UnwritablePathError, match=rf"cannot write {target}: No space left"):
        atomic_write_bytes(target, b"new")
    with pytest.raises(UnwritablePathError, match=rf"cannot write {tmp_path}: No space left"):
        writable_dir(tmp_path)
    assert target.read_bytes() == b"old" and listing(tmp_path) == {"out", "out/run.json"}


@pytest.mark.slow
def test_predict_cli_prints_top_k_and_names_a_corrupt_photo(tmp_path: Path) -> None:
    ckpt = cnn_ckpt(tmp_path / "cnn.ckpt")
    folder = photos(tmp_path / "photos") / "test"
    (folder / "soup" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = subprocess.run([sys.executable, "-m", "hw2.predict", f"ckpt={ckpt}",
                          f"images={folder}", "top_k=2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert len(lines) == 6 and lines[0].startswith(f"{folder / 'bread' / '0.png'}: ")
    assert all(len(line.split(": ")[1].split(", ")) == 2 for line in lines)
    assert out.stderr.startswith(f"error: {folder / 'soup' / 'broken.jpg'}: cannot decode")
    assert "Traceback" not in out.stderr
