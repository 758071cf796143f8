"""CharLM checkpoints used further: fine-tuning on another text (`init_from`), BPC on any text
(`python -m hw2.evaluate`), and generate.py's sampling options."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from hw2.data.vocab import Vocab
from hw2.inference import evaluate, generate_samples
from hw2.models.char_rnn import nucleus
from hw2.models.charlm import CharLM
from hw2.runs.checkpoints import load_module
from hw2.train import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["~experiment", "data=text_file", "model.net.hidden_size=24", "model.net.embedding_dim=8",
        "model.net.num_layers=1", "data.batch_size=4", "data.seq_len=16",
        "trainer.precision=32-true", "trainer.val_check_interval=1.0", "test=false"]


@pytest.fixture
def pretrained(compose_cfg: Callable[..., DictConfig], small_text: Path, tmp_path: Path
               ) -> tuple[Path, dict]:
    """A tiny CharLM trained 2 epochs on `small_text` (whose val split is its last 10 %)."""
    cfg = compose_cfg([*TINY, f"data.corpus.path={small_text}", "trainer.max_epochs=2"],
                      tmp_path / "base")
    metrics = run(cfg)
    return tmp_path / "base" / "checkpoints" / "last.ckpt", metrics


def test_evaluate_equals_the_validation_bpc(pretrained: tuple[Path, dict], small_text: Path
                                            ) -> None:
    """BPC of the checkpoint on the validation text, read with the run's streams and windows,
    is the run's own last validation BPC."""
    ckpt, metrics = pretrained
    text = small_text.read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]  # data.corpus.val_fraction=0.1: the last 10 %
    bpc, count, unseen = evaluate(ckpt, val, streams=4, seq_len=16)
    assert bpc == pytest.approx(metrics["val/bpc"], abs=1e-4)
    assert unseen == [] and count == (len(val) // 4 - 1) * 4
    one_stream, _, _ = evaluate(ckpt, val, streams=1, seq_len=16)
    assert one_stream != pytest.approx(bpc, abs=1e-4)  # the streams really change the reading


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_evaluate_cli_names_unseen_characters(pretrained: tuple[Path, dict], tmp_path: Path
                                              ) -> None:
    ckpt, _ = pretrained
    other = tmp_path / "other.txt"
    other.write_text("ROMEO: what light? Zounds~ " * 20, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "hw2.evaluate", f"ckpt={ckpt}", f"text={other}",
                          "seq_len=16"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "2 character(s)" in out.stderr and "'Z', '~'" in out.stderr
    missing = subprocess.run([sys.executable, "-m", "hw2.evaluate", f"ckpt={ckpt}",
                              f"text={tmp_path / 'nope.txt'}"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "nope.txt is not a file" in missing.stderr


def test_fine_tuning_keeps_rows_and_adds_new_characters(
        pretrained: tuple[Path, dict], compose_cfg: Callable[..., DictConfig], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    ckpt, _ = pretrained
    base = load_module(ckpt, CharLM)
    new_text = tmp_path / "new.txt"
    new_text.write_text("ZOUNDS! Quoth the raven: 'Nevermore.' " * 60, encoding="utf-8")
    cfg = compose_cfg([*TINY, f"data.corpus.path={new_text}", "+trainer.max_steps=1",
                       "model.optimizer.lr=0", "model.net.hidden_size=999",
                       "model.net.dropout=0.1", f"init_from={ckpt}"], tmp_path / "tuned")
    with caplog.at_level("WARNING"):
        run(cfg)
    tuned = load_module(tmp_path / "tuned" / "checkpoints" / "last.ckpt", CharLM)
    new_chars = sorted(set(new_text.read_text()) - set(base.vocab.chars))
    assert new_chars and tuned.vocab.chars == base.vocab.chars + new_chars  # old indices kept
    assert any("new to the checkpoint" in r.message and "Z" in r.message for r in caplog.records)
    # the architecture is the checkpoint's (hidden_size=999 ignored), the dropout this run's
    assert tuned.hparams.net["hidden_size"] == 24 and tuned.hparams.net["dropout"] == 0.1
    # lr=0: every known character's rows are the checkpoint's, the rest of the net too
    n = len(base.vocab.chars)
    for name in ("embedding.weight", "head.weight", "head.bias"):
        old, now = base.net.state_dict()[name], tuned.net.state_dict()[name]
        assert torch.equal(now[:n], old[:n]), name
        assert now.shape[0] == len(tuned.vocab)
    assert torch.equal(tuned.net.rnn.weight_hh_l0, base.net.rnn.weight_hh_l0)
    saved = torch.load(tmp_path / "tuned" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # weights only: the step count starts again


def test_fine_tuning_refuses_a_checkpoint_of_another_task(
        compose_cfg: Callable[..., DictConfig], small_text: Path, tmp_path: Path) -> None:
    other = tmp_path / "cnn.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"class_names": ["a", "b"]}}, other)
    cfg = compose_cfg([*TINY, f"data.corpus.path={small_text}", f"init_from={other}"])
    with pytest.raises(ValueError, match="is of ImageClassifier .*not of CharLM"):
        run(cfg)


@pytest.mark.slow  # a subprocess of 7 s
def test_generate_samples_top_p_and_prime_file(pretrained: tuple[Path, dict], tmp_path: Path
                                               ) -> None:
    ckpt, _ = pretrained
    three = generate_samples(ckpt, "ROMEO", 40, 1.0, seed=3, num_samples=3)
    assert len(three) == 3 and len(set(three)) == 3 and all(len(s) == 45 for s in three)
    assert three == generate_samples(ckpt, "ROMEO", 40, 1.0, seed=3, num_samples=3)
    # top_p so small that only the most likely character survives: greedy decoding
    assert generate_samples(ckpt, "ROMEO", 40, 1.0, seed=5, top_p=1e-6) == generate_samples(
        ckpt, "ROMEO", 40, 0.0)
    prime = tmp_path / "prime.txt"
    prime.write_text("JULIET:\nO sweet", encoding="utf-8")
    out = subprocess.run([sys.executable, "generate.py", f"ckpt={ckpt}", f"prime_file={prime}",
                          "length=20", "num_samples=2", "seed=0", "top_p=0.9"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("--- sample") == 2 and out.stdout.count("JULIET:\nO sweet") == 2


def test_nucleus_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    assert torch.allclose(nucleus(probs, 0.7), torch.tensor([0, 0.625, 0.375, 0]))
    assert torch.allclose(nucleus(probs, 0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(nucleus(probs, 1.0), probs)
    assert Vocab.from_text("ab").extended("cab!").chars == ["a", "b", "!", "c"]
