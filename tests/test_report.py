"""The sweep report: seed statistics against a hand computation (fast, synthetic runs) and a
report on a tiny real sweep of each task whose numbers equal the event files' (slow)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hw2.report import best_groups, build_report, group_table
from hw2.report.groups import Group, compare, group_runs
from hw2.report.runs import Run, load_runs
from tests.helpers.photos import make_photos
from tests.helpers.sweeps import TINY_CHARLM, md_rows, sweep


def fake_run(tmp_path: Path, name: str, cell: str, seed: int, test_bpc: float) -> Run:
    """A finished CharLM run whose only numbers are its test BPC (the statistics' input)."""
    cfg = OmegaConf.create({"seed": seed, "model": {"net": {"cell": cell}}})
    run = Run(tmp_path / name, "charlm", cfg, {}, [f"model.net.cell={cell}", f"seed={seed}"],
              {"status": "finished"}, "finished", "val/bpc", "min")
    run.scalars = {"val/bpc": [(10, 0.0, test_bpc + 0.1)], "test/bpc": [(11, 0.0, test_bpc)]}
    return run


def test_seed_mean_std_and_spread_flag_by_hand(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path, "0", "lstm", 1, 2.0), fake_run(tmp_path, "1", "lstm", 2, 2.5),
            fake_run(tmp_path, "2", "lstm", 3, 3.5), fake_run(tmp_path, "3", "rnn", 1, 2.9),
            fake_run(tmp_path, "4", "rnn", 2, 3.1), fake_run(tmp_path, "5", "gru", 1, 5.0),
            fake_run(tmp_path, "6", "gru", 2, 5.2)]
    groups = group_runs(runs, ["model.net.cell"])
    assert [g.label for g in groups] == [f"model.net.cell={c}" for c in ("lstm", "rnn", "gru")]
    lstm = groups[0].stat("test")
    # by hand: mean (2 + 2.5 + 3.5) / 3 = 2.6667; deviations -2/3, -1/6, 5/6;
    # sample variance (4/9 + 1/36 + 25/36) / 2 = 7/12
    assert lstm is not None and lstm.n == 3
    assert lstm.mean == pytest.approx(8 / 3)
    assert lstm.std == pytest.approx(math.sqrt(7 / 12))
    rnn = groups[1].stat("test")
    assert rnn is not None and rnn.mean == pytest.approx(3.0)
    assert rnn.std == pytest.approx(math.sqrt(0.02))  # (0.01 + 0.01) / 1
    comps = compare(groups, "test", "min")
    assert comps[0].is_best
    # rnn is 0.333 worse, less than lstm's spread 0.764: flagged; gru is 2.43 worse: not
    assert comps[1].delta == pytest.approx(1 / 3) and comps[1].within_spread is True
    assert comps[2].within_spread is False
    table, primary = group_table(groups, "min", "bpc")
    assert primary == "test"
    assert table.rows[0][1] == "3/3" and "2.6667 ± 0.7638" in table.rows[0]
    assert "⚠" in table.rows[1][-1] and "⚠" not in table.rows[2][-1]


def event_numbers(run_dir: Path, metric: str, mode: str) -> dict[str, float]:
    """Final/best validation and test metric, read straight from the run's event files."""
    val: dict[int, float] = {}
    test: list[float] = []
    for f in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        if f"val/{metric}" in tags:
            val.update({e.step: e.value for e in acc.Scalars(f"val/{metric}")})
        if f"test/{metric}" in tags:
            test += [e.value for e in acc.Scalars(f"test/{metric}")]
    pick = min if mode == "min" else max
    return {"final": val[max(val)], "best": pick(val.values()), "test": test[-1]}


def check_report(sweep_dir: Path, jobs: int, metric: str, mode: str) -> None:
    report = sweep_dir / "report.md"
    rows = md_rows(report)
    assert sorted(rows) == [str(i) for i in range(jobs)]  # one row per job
    header = next(line for line in report.read_text().splitlines() if line.startswith("| run |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    for name, cells in rows.items():
        nums = event_numbers(sweep_dir / name, metric, mode)
        row = dict(zip(cols, cells, strict=True))
        assert float(row[f"final val/{metric}"]) == pytest.approx(nums["final"], abs=5e-5)
        assert float(row[f"best val/{metric}"]) == pytest.approx(nums["best"], abs=5e-5)
        assert float(row[f"test/{metric}"]) == pytest.approx(nums["test"], abs=5e-5)
        assert row["status"] == "finished"
    for run in load_runs(sweep_dir):  # run.json's numbers are those of the events
        events_only = dataclasses.replace(run, record=None)
        assert run.params == events_only.params and run.params is not None
        for key in ("final_val", "best_val", "test"):
            assert getattr(run, key) == pytest.approx(getattr(events_only, key), abs=1e-6)
    html = (sweep_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # figures embedded, no external files
    assert (sweep_dir / "report_figures").is_dir()


@pytest.mark.slow
def test_report_of_a_real_charlm_sweep(tmp_path: Path, small_text: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    out = sweep([*TINY_CHARLM, f"data.corpus.path={small_text}", f"paths.root_dir={tmp_path}",
                 "model.net.cell=rnn,gru", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"report: {sweep_dir / 'report.html'}" in out.stdout  # the callback said where
    check_report(sweep_dir, 4, "bpc", "min")
    md = (sweep_dir / "report.md").read_text()
    assert "| model.net.cell=rnn | 2/2 |" in md and "| model.net.cell=gru | 2/2 |" in md
    assert "Samples primed with 'ROMEO'" in md and md.count("ROMEO") >= 3
    assert (sweep_dir / "report_figures" / "charlm_curves.png").is_file()
    assert (sweep_dir / "report_figures" / "charlm_weight_histograms.png").is_file()
    # regrouping from the command line: all seeds of all cells as one group
    build_report(sweep_dir, group_by=[], samples=False)
    assert "| all runs | 4/4 |" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_report_of_a_real_cnn_sweep(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos")
    sweep_dir = tmp_path / "sweep"
    out = sweep(["task=cnn", f"data.root={photos}", "data.image_size=32", "data.batch_size=4",
                 "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                 "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                 "callbacks.progress_bar.refresh_rate=0", f"paths.root_dir={tmp_path}",
                 "model.l2=0,1e-2", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    check_report(sweep_dir, 4, "acc", "max")
    figs = {p.name for p in (sweep_dir / "report_figures").iterdir()}
    assert {"cnn_curves.png", "cnn_acc_vs_model.l2.png", "cnn_weight_histograms.png"} <= figs
    best = Group((), load_runs(sweep_dir)).best_run()
    assert best is not None
    assert ("test/misclassified" in best.images) == any(
        f == f"cnn_misclassified_{best.name}.png" for f in figs)
    md = (sweep_dir / "report.md").read_text()
    assert "| model.l2=0 | 2/2 |" in md and "| model.l2=0.01 | 2/2 |" in md


def write_run(sweep_dir: Path, name: str, cell: str, seed: int, val: list[float], test: float,
              commit: str, diff: str = "") -> None:
    """A finished CharLM run on disk as a sweep job leaves it: config, overrides, run.json with
    its commit and final metrics, TensorBoard scalars."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = sweep_dir / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"seed": seed, "model": {"_target_": "hw2.models.charlm.CharLM",
                                            "net": {"cell": cell}},
                    "callbacks": {"model_checkpoint": {"monitor": "val/bpc", "mode": "min"}}},
                   run_dir / ".hydra" / "config.yaml")
    OmegaConf.save([f"model.net.cell={cell}", f"seed={seed}"],
                   run_dir / ".hydra" / "overrides.yaml")
    git = {"commit": commit, "dirty": bool(diff), **({"diff_sha1": diff} if diff else {})}
    (run_dir / "run.json").write_text(json.dumps(
        {"status": "finished", "started": 100.0, "ended": 160.5, "attempts": 1, "git": git,
         "metrics": {"val/bpc": val[-1], "best/val/bpc": min(val), "test/bpc": test,
                     "trainer/global_step": 30.0}}))
    with SummaryWriter(str(run_dir / "tensorboard")) as w:
        for i, v in enumerate(val):
            w.add_scalar("val/bpc", v, 10 * (i + 1))
        w.add_scalar("test/bpc", test, 31)


def test_report_flags_mixed_code_and_exports_the_table(tmp_path: Path) -> None:
    a, b = "a" * 40, "b" * 40
    write_run(tmp_path, "0", "rnn", 1, [3.1, 2.71828, 2.9], 2.80001, a)
    write_run(tmp_path, "1", "rnn", 2, [3.3, 2.6], 2.75, b)  # same group, another commit
    write_run(tmp_path, "2", "gru", 1, [3.0, 2.5], 2.5, a)
    write_run(tmp_path, "3", "gru", 2, [3.2, 2.4], 2.45, a, diff="d1ff")  # + a diff: flagged
    write_run(tmp_path, "4", "lstm", 1, [3.0, 2.2], 2.2, a)
    write_run(tmp_path, "5", "lstm", 2, [3.0, 2.3], 2.3, a)  # same code: not flagged
    build_report(tmp_path, samples=False)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| model.net.cell=rnn ⚠ 2 code versions | 2/2 |" in md
    assert "| model.net.cell=gru ⚠ 2 code versions | 2/2 |" in md
    assert "| model.net.cell=lstm | 2/2 |" in md
    assert ("⚠ Runs of different code in one group (commit, +diff = uncommitted changes): "
            "model.net.cell=rnn: aaaaaaa, bbbbbbb; model.net.cell=gru: aaaaaaa, "
            "aaaaaaa+diff d1ff") in md
    table = md_rows(tmp_path / "report.md")
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert table["3"][cols.index("commit")] == "aaaaaaa+dirty"

    with (tmp_path / "runs.csv").open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    json_rows = json.loads((tmp_path / "runs.json").read_text())
    assert [r["run"] for r in csv_rows] == [r["run"] for r in json_rows] == list("012345")
    for c, j in zip(csv_rows, json_rows, strict=True):
        cells = dict(zip(cols, table[c["run"]], strict=True))
        for col, key in (("final val/bpc", "final_val"), ("best val/bpc", "best_val"),
                         ("test/bpc", "test")):
            assert f"{float(c[key]):.4f}" == cells[col] == f"{j[key]:.4f}"
        assert c["commit"] == j["commit"] == cells["commit"]
        assert int(c["steps"]) == j["steps"] == int(cells["steps"]) == 30
        assert c["status"] == j["status"] == cells["status"] == "finished"
        assert c["seed"] == str(j["seed"]) and j["seed"] in (1, 2)
        assert c["overrides"] == f"model.net.cell={cells['model.net.cell']} seed={j['seed']}"
        assert c["group"] == j["group"] == f"model.net.cell={cells['model.net.cell']}"
    assert json_rows[0]["best_val"] == pytest.approx(2.71828, rel=1e-6)  # full precision
    try:
        import pandas
    except ImportError:
        return
    frame = pandas.read_csv(tmp_path / "runs.csv")
    assert list(frame["best_val"].round(4)) == [round(r["best_val"], 4) for r in json_rows]


def write_small_run(run_dir: Path, hidden: int, seed: int, bpc: float) -> None:
    """A finished CharLM run on disk as train.py leaves it, with a few real event records."""
    from torch.utils.tensorboard import SummaryWriter

    overrides = [f"model.net.hidden_size={hidden}", f"seed={seed}"]
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"seed": seed, "model": {"_target_": "hw2.models.charlm.CharLM",
                                            "net": {"hidden_size": hidden}},
                    "callbacks": {"model_checkpoint": {"monitor": "val/bpc", "mode": "min"}}},
                   run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(overrides, run_dir / ".hydra" / "overrides.yaml")
    final = round(bpc + 0.2 - 2 / 10, 6)
    (run_dir / "run.json").write_text(json.dumps(
        {"status": "finished", "attempts": 1, "overrides": overrides,
         "params": 1000 * hidden,
         "metrics": {"val/bpc": final, "best/val/bpc": final, "test/bpc": bpc,
                     "trainer/global_step": 3.0}}))
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    for step in range(3):
        writer.add_scalar("train/loss", bpc + 1 - step / 10, step)
        writer.add_scalar("val/bpc", bpc + 0.2 - step / 10, step)
    writer.add_scalar("test/bpc", bpc, 3)
    writer.close()


def test_many_groups_draw_the_best_and_say_what_is_left_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """14 groups (2 seeds each): the figures show the best 10 by test BPC and say 4 more were
    not drawn; the group table still lists all 14, the run table all 28 runs. The table's
    numbers come from the runs' records: only the drawn runs' events are read."""
    import hw2.report.runs

    sizes = [16 * (i + 1) for i in range(14)]
    for i, hidden in enumerate(sizes):
        for seed in (1, 2):
            # larger networks score better here: the best 10 groups are the 10 largest
            write_small_run(tmp_path / str(2 * i + seed - 1), hidden, seed, 3.0 - i / 10)
    read: list[str] = []
    real_read = hw2.report.runs.read_events

    def counted(tb_dir: Path) -> hw2.report.runs.Events:
        read.append(tb_dir.parent.name)
        return real_read(tb_dir)

    monkeypatch.setattr(hw2.report.runs, "read_events", counted)
    build_report(tmp_path, samples=False)
    assert sorted(read, key=int) == [str(i) for i in range(8, 28)]  # the 10 drawn groups, once
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert ("Figures show the best 10 of 14 groups by test bpc; 4 more groups not drawn "
            "(every group is in the table above).") in md
    for hidden in sizes:
        assert f"| model.net.hidden_size={hidden} | 2/2 |" in md
    assert len(md_rows(tmp_path / "report.md")) == 28
    # the curves figure has a legend entry per drawn group: the 10 largest networks
    drawn = [g.label for g in best_groups(
        group_runs(load_runs(tmp_path), ["model.net.hidden_size"]), "test", "min", 10)]
    assert drawn == [f"model.net.hidden_size={h}" for h in sizes[4:]]


@pytest.mark.slow
def test_report_samples_are_what_generate_prints(tmp_path: Path, small_text: Path) -> None:
    """The report's worker rebuilds a run's best network with torch alone and samples it: the
    same text as `generate.py ckpt=<best> prime=ROMEO temperature=0.8 seed=0`, and a run
    without a checkpoint is said to have none."""
    from hw2.config import compose_config
    from hw2.inference import generate
    from hw2.report.samples import LENGTH, PRIME, TEMPERATURE, SampleWorker
    from hw2.train import run

    run_dir = tmp_path / "run"
    run(compose_config([*TINY_CHARLM, f"data.corpus.path={small_text}", "sample_at_end=null",
                        f"paths.cache_dir={tmp_path / 'cache'}"], run_dir))
    (tmp_path / "empty").mkdir()
    worker = SampleWorker()
    try:
        worker.submit([run_dir, tmp_path / "empty"])
        (ckpt, text), (none, missing) = worker.results()
    finally:
        worker.close()
    assert ckpt is not None and ckpt.parent == run_dir / "checkpoints" and ckpt.name != "last.ckpt"
    assert text == generate(ckpt, prime=PRIME, length=LENGTH, temperature=TEMPERATURE, seed=0)
    assert text.startswith(PRIME) and len(text) == len(PRIME) + LENGTH
    assert (none, missing) == (None, "(no checkpoint)")


def test_choices_read_from_their_block_equal_the_whole_hydra_yaml(tmp_path: Path) -> None:
    """The report reads `hydra.runtime.choices` from its block of hydra.yaml alone: the same
    choices as parsing the whole file Hydra writes (OmegaConf.save of the hydra node)."""
    import yaml

    from hw2.config import compose_config
    from hw2.report.runs import _choices_text

    cfg = compose_config(["task=cnn", "model.l2=0.01"], tmp_path / "run")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra)}),
                   tmp_path / "hydra.yaml")
    text = (tmp_path / "hydra.yaml").read_text()
    whole = yaml.safe_load(text)["hydra"]["runtime"]["choices"]
    block = _choices_text(text)
    assert block is not None and yaml.safe_load(block) == whole
    assert whole["task"] == "cnn" and len(whole) > 5
    assert _choices_text("hydra:\n  runtime: {}\n") is None  # another layout: parsed whole
