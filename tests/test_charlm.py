"""CharLM: the network, BPC, truncated BPTT, sampling, and a real training run read back."""

from __future__ import annotations

import contextlib
import io
import math
import shlex
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from hw2.config import compose_config
from hw2.data.char_data import StreamWindows, make_streams
from hw2.data.vocab import Vocab
from hw2.inference import generate
from hw2.models.char_rnn import CharRNN, drop_connect, locked_dropout
from hw2.models.charlm import CharLM
from hw2.runs.checkpoints import load_module
from hw2.runs.record import read_record
from hw2.train import run
from tests.helpers.paths import ROOT
from tests.helpers.probes import FitProbe, assert_same_tensors

TINY = ["model.net.hidden_size=32", "model.net.embedding_dim=16", "model.net.num_layers=1",
        "data.batch_size=4", "data.seq_len=16"]


def tiny_model(vocab: Vocab, cell: str = "lstm", carry: bool = True) -> CharLM:
    return CharLM(vocab.state_dict(), partial(CharRNN, cell=cell, embedding_dim=8,
                                              hidden_size=16, num_layers=1),
                  carry_hidden=carry)


def test_unknown_cell_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"model.net.cell='transformer'.*\['gru', 'lstm', 'rnn'\]"):
        CharRNN(10, cell="transformer")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carried_state_equals_one_long_sequence(cell: str) -> None:
    """Truncated BPTT keeps the forward pass exact: two windows with the carried state give
    the same outputs as the whole sequence at once."""
    torch.manual_seed(0)
    net = CharRNN(12, cell=cell, embedding_dim=8, hidden_size=16, num_layers=2).eval()
    x = torch.randint(0, 12, (3, 20))
    whole, _ = net(x)
    first, h = net(x[:, :13])
    second, _ = net(x[:, 13:], h)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_tied_weights_share_the_matrix() -> None:
    net = CharRNN(10, embedding_dim=16, hidden_size=16, tie_weights=True)
    assert net.head.weight is net.embedding.weight
    with pytest.raises(ValueError, match="embedding_dim == model.net.hidden_size"):
        CharRNN(10, embedding_dim=8, hidden_size=16, tie_weights=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_drop_masks_the_recurrent_weights_in_training_only(cell: str) -> None:
    """DropConnect: in training the hidden-to-hidden matrices are masked (the same mask for
    every stream and step, rescaled), the parameters themselves stay whole and get gradients
    only through kept entries; in eval the net is exactly the undropped one."""
    torch.manual_seed(0)
    net = CharRNN(12, cell=cell, embedding_dim=8, hidden_size=16, num_layers=2, weight_drop=0.5)
    plain = CharRNN(12, cell=cell, embedding_dim=8, hidden_size=16, num_layers=2)
    plain.load_state_dict(net.state_dict())
    x = torch.randint(0, 12, (3, 20))
    before = net.rnn.weight_hh_l0.detach().clone()
    out, _ = net.train()(x)
    assert not torch.allclose(out, plain.train()(x)[0])
    out.sum().backward()
    torch.testing.assert_close(net.rnn.weight_hh_l0.detach(), before)  # never overwritten
    grad = net.rnn.weight_hh_l0.grad
    dropped = grad == 0
    assert 0.3 < dropped.float().mean() < 0.7  # about half the entries got no gradient
    assert net.rnn.weight_ih_l0.grad.ne(0).float().mean() > 0.9  # input weights not dropped
    torch.testing.assert_close(net.eval()(x)[0], plain.eval()(x)[0])
    with pytest.raises(ValueError, match="model.net.weight_drop"):
        CharRNN(12, weight_drop=1.0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_locked_dropout_runs_the_fused_cells_weights_layer_by_layer(cell: str) -> None:
    """With locked dropout the layers run one at a time on the fused cell's own weights (the
    same parameter names, so checkpoints load either way): at rate 0 the outputs, the carried
    state and the gradients equal the fused cell's; at rate 0.5, with weight drop on top,
    training outputs change and eval is still exactly the fused net."""
    torch.manual_seed(0)
    kw = {"embedding_dim": 8, "hidden_size": 16, "num_layers": 3}
    locked, fused = CharRNN(12, cell, **kw, locked_dropout=True), CharRNN(12, cell, **kw)
    fused.load_state_dict(locked.state_dict())
    x = torch.randint(0, 12, (3, 20))
    (a, ha), (b, hb) = locked.train()(x[:, :9]), fused.train()(x[:, :9])
    (a2, _), (b2, _) = locked(x[:, 9:], ha), fused(x[:, 9:], hb)
    torch.testing.assert_close(a2, b2)
    (a.sum() + a2.sum()).backward()
    (b.sum() + b2.sum()).backward()
    for (name, p), q in zip(locked.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    dropped = CharRNN(12, cell, **kw, dropout=0.5, weight_drop=0.3, locked_dropout=True)
    dropped.load_state_dict(locked.state_dict())
    assert not torch.allclose(dropped.train()(x)[0], fused.train()(x)[0])
    torch.testing.assert_close(dropped.eval()(x)[0], fused.eval()(x)[0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_head_over_all_layers_reads_each_layer_with_the_fused_weights(cell: str) -> None:
    """`head_all_layers`: the head reads every layer's output side by side. The top layer's
    part and the carried state are the fused cell's, the head's first columns see layer 0
    directly (its gradient reaches them without passing the layer above), and with dropout
    0.5 training differs from eval while eval stays deterministic."""
    torch.manual_seed(0)
    kw = {"embedding_dim": 8, "hidden_size": 16, "num_layers": 2}
    net, fused = CharRNN(12, cell, **kw, head_all_layers=True), CharRNN(12, cell, **kw)
    assert net.head.in_features == 32
    fused.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("head")},
                          strict=False)
    x = torch.randint(0, 12, (3, 20))
    emb = net.embedding(x)
    features, state = net.eval()._recur(emb, None)
    top, fused_state = fused.eval().rnn(emb)
    torch.testing.assert_close(features[..., 16:], top)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    fused_state if isinstance(fused_state, tuple) else (fused_state,),
                    strict=True):
        torch.testing.assert_close(a, b)
    bottom = CharRNN(12, cell, 8, 16, 1)
    bottom.rnn.load_state_dict({k: v for k, v in
                                net.rnn.state_dict().items() if k.endswith("_l0")})
    torch.testing.assert_close(features[..., :16], bottom.rnn(emb)[0])
    logits, _ = net(x)
    torch.testing.assert_close(logits, net.head(features))
    logits.sum().backward()
    assert net.head.weight.grad[:, :16].abs().sum() > 0
    dropped = CharRNN(12, cell, **kw, dropout=0.5, head_all_layers=True)
    dropped.load_state_dict(net.state_dict())
    assert not torch.allclose(dropped.train()(x)[0], logits)
    torch.testing.assert_close(dropped.eval()(x)[0], logits)
    with pytest.raises(ValueError, match="tie_weights and model.net.head_all_layers"):
        CharRNN(12, cell, 16, 16, 2, tie_weights=True, head_all_layers=True)


def test_output_dropout_sets_the_rate_before_the_head_alone() -> None:
    """`output_dropout` replaces `dropout` before the head only: one layer (no dropout between
    layers) with dropout 0.5 and output dropout 0 trains deterministically; unset, the head's
    input is dropped at `dropout`. A rate outside [0, 1) names its key."""
    torch.manual_seed(0)
    x = torch.randint(0, 12, (3, 20))
    kw = {"embedding_dim": 8, "hidden_size": 16, "num_layers": 1, "dropout": 0.5}
    kept, dropped = CharRNN(12, **kw, output_dropout=0.0), CharRNN(12, **kw)
    dropped.load_state_dict(kept.state_dict())
    torch.testing.assert_close(kept.train()(x)[0], kept.eval()(x)[0])
    assert not torch.allclose(dropped.train()(x)[0], dropped.eval()(x)[0])
    two = CharRNN(12, "lstm", 8, 16, 2, dropout=0.5, output_dropout=0.0)
    assert two.rnn.dropout == 0.5  # still between the layers
    with pytest.raises(ValueError, match=r"model.net.output_dropout must be in \[0, 1\), got 1.0"):
        CharRNN(12, output_dropout=1.0)


def test_locked_dropout_keeps_one_mask_per_stream_for_the_whole_window() -> None:
    """Each stream loses the same features at every time step (variational dropout); streams
    get their own masks; kept entries are scaled by 1/(1-p)."""
    torch.manual_seed(0)
    x = torch.rand(64, 30, 40) + 0.5
    y = locked_dropout(x, 0.25)
    zero = y == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # constant over time
    assert 0.2 < zero[:, 0].float().mean() < 0.3
    assert not torch.equal(zero[0, 0], zero[1, 0])  # per stream
    torch.testing.assert_close(y[~zero], x[~zero] / 0.75)
    assert locked_dropout(x, 0.0) is x


def test_input_dropout_drops_embedded_characters_in_training_only() -> None:
    """Dropout on the embedding's output: training outputs change, eval is the plain net, and
    a rate outside [0, 1) is an error naming its key."""
    torch.manual_seed(0)
    net = CharRNN(12, embedding_dim=8, hidden_size=16, num_layers=1, input_dropout=0.5)
    plain = CharRNN(12, embedding_dim=8, hidden_size=16, num_layers=1)
    plain.load_state_dict(net.state_dict())
    x = torch.randint(0, 12, (3, 20))
    out, _ = net.train()(x)
    assert not torch.allclose(out, plain.train()(x)[0])
    torch.testing.assert_close(net.eval()(x)[0], plain.eval()(x)[0])
    for key in ("dropout", "input_dropout"):
        with pytest.raises(ValueError, match=f"model.net.{key} must be in"):
            CharRNN(12, **{key: 1.0})


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_drop_connect_drops_at_the_rate_and_keeps_the_mean(p: float) -> None:
    """The byte mask drops a fraction p (to 1/256) of the entries, scales the kept ones so the
    expected weight is unchanged, and draws a new mask each call."""
    torch.manual_seed(0)
    w = torch.rand(512, 256) + 0.5
    out = drop_connect(w, p)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.01
    scale = 256 / (256 - round(p * 256))
    torch.testing.assert_close(out[~dropped], w[~dropped] * scale)
    assert abs(out.mean().item() / w.mean().item() - 1) < 0.01
    assert not torch.equal(dropped, drop_connect(w, p) == 0)


def test_bpc_is_weighted_over_characters_like_a_hand_computation() -> None:
    """With a constant output distribution p, BPC over a split is -mean(log2 p[y]) over every
    character, whatever the window sizes (the last stream window is shorter)."""
    text = "abcaabbbcccaaab" * 7 + "ab"  # 107 chars -> streams of 53, windows 10,10,...,2
    vocab = Vocab.from_text(text)
    model = tiny_model(vocab)
    bias = torch.tensor([2.0, 0.5, -1.0])
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.copy_(bias)
    streams = make_streams(vocab.encode(text), 2)
    loader = DataLoader(StreamWindows(vocab.encode(text), 2, seq_len=10), batch_size=None)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.validate(model, loader, verbose=False)
    log2p = torch.log_softmax(bias, 0) / math.log(2)
    targets = streams[:, 1:].reshape(-1)
    hand = -sum(float(log2p[t]) for t in targets) / targets.numel()
    assert trainer.callback_metrics["val/bpc"].item() == pytest.approx(hand, rel=1e-5)
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(hand * math.log(2),
                                                                        rel=1e-5)


def test_sampling_temperature_top_k_and_prime_errors() -> None:
    vocab = Vocab.from_text("ROMEO: hello there\n", unk=True)
    model = tiny_model(vocab)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = model.sample("ROMEO", 40, 0.8, generator=g())
    assert a.startswith("ROMEO") and len(a) == 45 and a == model.sample("ROMEO", 40, 0.8,
                                                                          generator=g())
    assert "\ufffd" not in model.sample("RO", 300, 2.0, generator=g())  # <unk> never sampled
    greedy = model.sample("ROMEO", 20, 0.0)
    assert greedy == model.sample("ROMEO", 20, 0.0)
    top1 = model.sample("ROMEO", 20, 1.0, top_k=1, generator=g())
    assert top1 == greedy  # top-1 sampling is greedy decoding
    with pytest.raises(ValueError, match=r"prime has 2 character\(s\).*'J', 'U'"):
        model.sample("JUJU", 5)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One short real run (stream mode, LSTM) through the Hydra config, shared by tests."""
    tmp = tmp_path_factory.mktemp("charlm")
    text = tmp / "text.txt"
    text.write_text(("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
                     "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n") * 120)
    cfg = compose_config(
        [*TINY, "data=text_file", f"data.corpus.path={text}", f"paths.root_dir={tmp}",
         "data.corpus.test_fraction=0.1",
         "trainer.max_epochs=2", "trainer.val_check_interval=1.0", "trainer.precision=32",
         "callbacks.progress_bar.refresh_rate=0", "callbacks.text_sample.length=40",
         "logger=many"],
        tmp / "run",
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = run(cfg)
    (tmp / "stdout.txt").write_text(printed.getvalue(), encoding="utf-8")
    return tmp / "run", metrics


def test_training_run_logs_and_checkpoints(trained_run: tuple[Path, dict]) -> None:
    out, metrics = trained_run
    assert metrics["test/bpc"] < 4.0  # learned something (uniform over 28 chars is 4.8 bits)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and len(ckpts) == 2 and not any(".tmp" in c for c in ckpts)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0,
                                                                       "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for scalar in ("train/loss", "train/bpc", "val/loss", "val/bpc", "test/bpc", "lr-AdamW"):
        assert scalar in tags["scalars"], scalar
    assert len(events.Scalars("val/bpc")) == 2  # one per epoch
    hist = set(tags["histograms"])
    for name in ("embedding/weight", "rnn/weight_ih_l0", "rnn/weight_hh_l0", "rnn/bias_ih_l0",
                 "head/weight", "head/bias"):
        assert f"params/{name}" in hist, name
    assert "samples/generated/text_summary" in tags["tensors"]
    sample = events.Tensors("samples/generated/text_summary")[-1].tensor_proto.string_val[0]
    assert sample.decode().strip().startswith("ROMEO:")
    assert metrics["best/val/bpc"] == pytest.approx(min(e.value for e in
                                                        events.Scalars("val/bpc")), rel=1e-5)
    assert "hp/test/bpc" in tags["scalars"]  # HParams view: final metrics beside the config
    assert "val/bpc" in (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    record = read_record(out)  # provenance: the code of this checkout and its libraries
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert record["git"]["commit"] == head
        assert (out / "git.diff").is_file() == record["git"]["dirty"]
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    assert record["argv"] and record["device_name"]


def test_hyperparameters_reach_the_hparams_view_and_yaml(trained_run: tuple[Path, dict]
                                                        ) -> None:
    """The config's data/model/trainer groups and the seed, as TensorBoard's HParams plugin
    reads them back (flattened by Lightning's logger: `data/batch_size`) and as hparams.yaml
    keeps them (nested like the config); targets, private keys and paths left out."""
    import yaml
    from tensorboard.plugins.hparams import plugin_data_pb2

    out, _ = trained_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["data/batch_size"].number_value == 4
    assert start["model/net/hidden_size"].number_value == 32
    lr = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())["model"]["optimizer"]["lr"]
    assert start["model/optimizer/lr"].number_value == pytest.approx(lr)
    assert start["seed"].number_value == 1234
    assert start["model/net/cell"].string_value == "lstm"
    assert not [k for k in start if "/_" in k or k.startswith("_")]  # _target_, _partial_
    assert "trainer/default_root_dir" not in start and "trainer/plugins" not in start
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert {h.name for h in experiment.hparam_infos} == set(start)
    assert "hp/test/bpc" in {m.name.tag for m in experiment.metric_infos}
    for logger in ("tensorboard", "csv"):
        saved = yaml.safe_load((out / logger / "hparams.yaml").read_text())
        assert saved["data"]["batch_size"] == 4 and saved["model"]["net"]["hidden_size"] == 32
        assert "_target_" not in saved["model"]["optimizer"]


def test_resume_from_last_checkpoint_continues(trained_run: tuple[Path, dict], tmp_path: Path
                                               ) -> None:
    """`ckpt_path=<2-epoch last.ckpt>` with max_epochs=3: the fit starts at that checkpoint's
    step and epoch, with its weights and AdamW moments, and trains the third epoch only."""
    out, _ = trained_run
    text = out.parent / "text.txt"
    last = out / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    steps_before = saved["global_step"]
    cfg = compose_config(
        [*TINY, "data=text_file", f"data.corpus.path={text}", f"paths.root_dir={tmp_path}",
         "data.corpus.test_fraction=0.1", "trainer.max_epochs=3", "trainer.precision=32",
         "callbacks.progress_bar.refresh_rate=0",
         "trainer.val_check_interval=1.0",
         f"ckpt_path={last}", "test=false"],
        tmp_path / "resumed",
    )
    probe = FitProbe()
    run(cfg, extra_callbacks=[probe])
    assert (probe.step, probe.epoch) == (steps_before, 2)
    assert probe.batches == steps_before // 2  # one epoch: the third
    assert_same_tensors(probe.weights, saved["state_dict"], "weights")
    assert_same_tensors(probe.optimizer, saved["optimizer_states"][0], "optimizer")
    assert probe.optimizer["state"][0]["step"] == steps_before  # AdamW's own count went on
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == steps_before * 3 // 2


def test_generate_from_checkpoint(trained_run: tuple[Path, dict]) -> None:
    out, _ = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    text = generate(ckpt, prime="ROMEO", length=60, temperature=0.8, seed=1)
    assert text.startswith("ROMEO") and len(text) == 65
    assert text == generate(ckpt, prime="ROMEO", length=60, temperature=0.8, seed=1)
    model = load_module(ckpt, CharLM)
    assert model.vocab.chars == sorted(set(model.vocab.chars)) and "R" in model.vocab.index


@pytest.mark.slow  # a subprocess of 7 s
def test_run_ends_with_a_sample_and_the_command_for_more(trained_run: tuple[Path, dict]
                                                         ) -> None:
    """sample_at_end: the run's last lines are a sample of the best checkpoint primed with
    ROMEO and a generate.py command that reproduces it and goes on (same seed)."""
    out, metrics = trained_run
    printed = (out.parent / "stdout.txt").read_text(encoding="utf-8")
    head, _, sample_and_command = printed.partition("sample of the best checkpoint (prime 'ROMEO'")
    assert "final metrics:" in head and sample_and_command, printed[-2000:]
    sample = sample_and_command.split("\n", 1)[1].rsplit("\n\nmore: ", 1)[0]
    assert sample.startswith("ROMEO") and len(sample) == len("ROMEO") + 250
    command = printed.rstrip("\n").rsplit("\n", 1)[1]
    assert command.startswith("more: python generate.py ckpt=")
    args = shlex.split(command.removeprefix("more: "))
    ckpt = Path(args[2].removeprefix("ckpt="))
    best = [p for p in (out / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert [ckpt] == best  # the best checkpoint, the one tested
    assert args[3:] == ["prime=ROMEO", "length=500", "temperature=0.8", "seed=0"]
    more = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert more.returncode == 0, more.stderr
    assert more.stdout.startswith(sample)
    assert len(more.stdout) == len("ROMEO") + 500 + 1  # and print's line break


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_generate_cli_and_its_errors(trained_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    bad = subprocess.run([sys.executable, "generate.py", f"ckpt={ckpt}", "prime=ZQX",
                          "length=5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not in the vocabulary" in bad.stderr and "'Z'" in bad.stderr
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_module(tmp_path / "missing.ckpt", CharLM)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_module(junk, CharLM)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 11}}, other)
    with pytest.raises(ValueError, match=r"no hw2 model hyperparameters .* not of CharLM"):
        load_module(other, CharLM)


def test_last_checkpoint_is_the_latest_state_even_without_improvement(
        tmp_path: Path, small_text: Path) -> None:
    """lr=0: val BPC never improves, so the best checkpoint stays at the first validation,
    but last.ckpt must still hold the final step (Lightning 2.6's save_last alone does not)."""
    cfg = compose_config([*TINY, "data=text_file", f"data.corpus.path={small_text}",
                          f"paths.root_dir={tmp_path}", "trainer.max_epochs=3",
                          "trainer.val_check_interval=1.0", "model.optimizer.lr=0",
                          "trainer.precision=32", "callbacks.progress_bar.refresh_rate=0",
                          "test=false"], tmp_path / "run")
    run(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    best = [p for p in ckpts.iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1 and best[0].name.startswith("epoch000-")
    assert last["epoch"] == 2 and last["global_step"] == 3 * torch.load(
        best[0], weights_only=False)["global_step"]


def test_set_dropout_reaches_the_fused_cell_and_the_locked_path() -> None:
    fused = CharRNN(10, "lstm", 8, 16, 2, dropout=0.25)
    locked = CharRNN(10, "lstm", 8, 16, 2, dropout=0.25, locked_dropout=True)
    for net in (fused, locked):
        net.set_dropout(0.4)
        assert net.dropout == 0.4
    assert fused.rnn.dropout == 0.4  # nn.LSTM reads its own copy at every call
    assert locked.rnn.dropout == 0.0  # the locked path drops between layers itself
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\), got 1.0"):
        fused.set_dropout(1.0)


def test_dropout_ramp_moves_the_rate_with_the_step(tmp_path: Path) -> None:
    """A short real run: the rate logged before every step follows start -> end over the
    run's steps, and the network ends at the last step's rate."""
    from hw2.callbacks.dropout_ramp import DropoutRamp
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 60)
    cfg = compose_config(
        [*TINY, "model.net.num_layers=2", "model.net.dropout=0.25", "data=text_file",
         f"data.corpus.path={text}", f"paths.root_dir={tmp_path}", "+trainer.max_steps=10",
         "trainer.max_epochs=-1", "trainer.log_every_n_steps=1", "trainer.precision=32",
         "callbacks.progress_bar.refresh_rate=0", "callbacks.text_sample.length=10",
         "+callbacks.dropout_ramp._target_=hw2.callbacks.dropout_ramp.DropoutRamp",
         "+callbacks.dropout_ramp.start=0.1", "+callbacks.dropout_ramp.end=0.6"],
        tmp_path / "run",
    )
    run(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/dropout")]
    assert [s for s, _ in logged] == list(range(10))
    assert [v for _, v in logged] == pytest.approx([0.1 + 0.05 * s for s in range(10)])
    with pytest.raises(ValueError, match=r"callbacks.dropout_ramp.end must be in \[0, 1\)"):
        DropoutRamp(0.1, 1.5)
    with pytest.raises(ValueError, match=r"dropout_ramp needs .* LightningModule has none"):
        DropoutRamp(0.1, 0.2).setup(None, pl.LightningModule(), "fit")  # type: ignore[arg-type]


def test_linear_and_cosine_schedules_share_the_warm_up_and_end_where_asked() -> None:
    """Both schedules warm up linearly over `warmup_steps`, then fall to `min_lr_ratio` at
    `total_steps`, linearly or along a cosine (a quarter of the way: 0.75 vs 0.854 of the rate)."""
    from hw2.models.base import warmup_cosine, warmup_linear

    def factors(make, **kw) -> list[float]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        factor = make(opt, total_steps=1100, warmup_steps=100, **kw).lr_lambdas[0]
        return [factor(s) for s in (0, 49, 99, 100, 350, 600, 1100, 5000)]

    assert factors(warmup_linear, min_lr_ratio=0.0) == pytest.approx(
        [0.01, 0.5, 1.0, 1.0, 0.75, 0.5, 0.0, 0.0])
    assert factors(warmup_linear, min_lr_ratio=0.2) == pytest.approx(
        [0.01, 0.5, 1.0, 1.0, 0.8, 0.6, 0.2, 0.2])
    assert factors(warmup_cosine, min_lr_ratio=0.1) == pytest.approx(
        [0.01, 0.5, 1.0, 1.0, 0.1 + 0.9 * (0.5 + 0.5 ** 1.5), 0.55, 0.1, 0.1])
