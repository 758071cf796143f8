"""The answer of a sweep: `python -m hw2.report <run dir | sweep dir | log dir>` writes
`report.md`, a self-contained `report.html`, `report_figures/*.png` and the run table as data
(`runs.csv`, `runs.json`: one row per run, for pandas) into that directory.

One section per task: a table of every run (failed and unfinished ones included), the seed
groups with mean, std and n, learning curves per group, the metric against numeric swept keys,
weight histograms side by side, and the CNN's misclassified photos or the CharLM's samples.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hw2.report import figures
from hw2.report.groups import Group, compare, group_runs, primary_metric
from hw2.report.render import Block, Heading, Image, Para, Pre, Table, to_html, to_markdown
from hw2.report.runs import Run, differing_keys, find_run_dirs, load_runs
from hw2.report.samples import PRIME, TEMPERATURE, SampleWorker
from hw2.runs.record import read_record, status_of
from hw2.utils.fileio import atomic_write_text

log = logging.getLogger(__name__)

FIG_DIR = "report_figures"
STUDY_FILE = "optuna_study.json"  # written by the hw2 Optuna sweeper into its sweep dir
LABEL = {"final_val": "final val", "best_val": "best val", "test": "test"}
EXPORT_COLUMNS = ["task", "run", "group", "overrides", "seed", "status", "commit", "monitor",
                  "final_val", "best_val", "test", "params", "steps", "wall_s", "attempts",
                  "error", "path"]
MAX_DRAWN_GROUPS = len(figures.COLORS)  # past this, lines share colours: the best ones only
MAX_HIST_RUNS = 6  # weight histograms side by side


def fmt(x: float | int | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}" if math.isfinite(x) else str(x)


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def status_text(run: Run) -> str:
    if run.status == "failed":
        return f"failed: {run.error or '?'}"
    if run.status == "interrupted":
        return "interrupted" + (f": {run.error}" if run.error else "")
    return run.status


def run_table(runs: list[Run], keys: list[str]) -> Table:
    m = runs[0].metric
    headers = ["run", *keys, f"final {runs[0].monitor}", f"best {runs[0].monitor}", f"test/{m}",
               "params", "steps", "wall", "commit", "attempts", "status"]
    rows = [[r.name, *[r.value(k) for k in keys], fmt(r.final_val), fmt(r.best_val), fmt(r.test),
             fmt(r.params), fmt(r.steps), fmt_time(r.wall_s), r.commit or "-", str(r.attempts),
             status_text(r)]
            for r in runs]
    return Table(headers, rows)


def export_rows(task: str, runs: list[Run], groups: list[Group]) -> list[dict[str, Any]]:
    """The run table as data, one dict per run (in the table's order) with full-precision
    numbers, for `runs.csv`."""
    label = {id(r): g.label for g in groups for r in g.runs}
    out = []
    for r in runs:
        seed = r.value("seed")
        out.append({"task": task, "run": r.name, "group": label[id(r)],
                    "overrides": " ".join(r.overrides),
                    "seed": int(seed) if seed.lstrip("-").isdigit() else None,
                    "status": r.status, "commit": r.commit, "monitor": r.monitor,
                    "final_val": r.final_val, "best_val": r.best_val, "test": r.test,
                    "params": r.params, "steps": r.steps, "wall_s": r.wall_s,
                    "attempts": r.attempts, "error": r.error, "path": str(r.path)})
    return out


def write_exports(root: Path, rows: list[dict[str, Any]]) -> None:
    """`runs.csv` (pandas.read_csv) and `runs.json` (a list of objects; non-finite numbers as
    null, since JSON has no NaN)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "runs.csv", buf.getvalue())
    clean = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in row.items()} for row in rows]
    atomic_write_text(root / "runs.json", json.dumps(clean, indent=1) + "\n")


def group_table(groups: list[Group], mode: str, metric_name: str) -> tuple[Table, str]:
    primary = primary_metric(groups)
    comps = compare(groups, primary, mode)
    headers = ["group", "n", *[f"{LABEL[m]} {metric_name} mean ± std" for m in
                               ("final_val", "best_val", "test")],
               f"Δ {LABEL[primary]} vs best"]
    rows = []
    for g, c in zip(groups, comps, strict=True):
        cells = []
        for m in ("final_val", "best_val", "test"):
            s = g.stat(m)  # type: ignore[arg-type]
            cells.append("-" if s is None else
                         f"{s.mean:.4f} ± {fmt(s.std)}" if s.std is not None else
                         f"{s.mean:.4f} (n=1)")
        if c.is_best:
            verdict = "best"
        elif c.delta is None:
            verdict = "-"
        elif c.within_spread is None:
            verdict = f"{c.delta:+.4f} (spread unknown: n=1)"
        elif c.within_spread:
            verdict = f"{c.delta:+.4f} ⚠ within seed spread"
        else:
            verdict = f"{c.delta:+.4f} beyond seed spread"
        label = g.label + (f" ⚠ {len(g.commits)} code versions" if g.commits else "")
        rows.append([label, f"{len(g.finished)}/{len(g.runs)}", *cells, verdict])
    return Table(headers, rows), primary


def mixed_code_note(groups: list[Group]) -> Para | None:
    """A warning naming the groups whose runs were made by different code."""
    mixed = [g for g in groups if g.commits]
    if not mixed:
        return None
    return Para("⚠ Runs of different code in one group (commit, +diff = uncommitted changes): "
                + "; ".join(f"{g.label}: {', '.join(g.commits)}" for g in mixed)
                + ". Their spread mixes code changes with seeds; each run's run.json and "
                "git.diff say what it ran.")


def best_groups(groups: list[Group], metric: str, mode: str, k: int) -> list[Group]:
    """The `k` best groups by `metric` (groups without it last), in their original order."""
    if len(groups) <= k:
        return groups
    sign = 1 if mode == "min" else -1

    def rank(item: tuple[int, Group]) -> tuple[bool, float, int]:
        st = item[1].stat(metric)  # type: ignore[arg-type]
        return (st is None, sign * st.mean if st else 0.0, item[0])

    keep = {i for i, _ in sorted(enumerate(groups), key=rank)[:k]}
    return [g for i, g in enumerate(groups) if i in keep]


def section(task: str, runs: list[Run], fig_dir: Path, group_by: Sequence[str] | None,
            sampler: SampleWorker | None) -> tuple[list[Block], list[dict[str, Any]]]:
    """The task's blocks and its rows for `runs.csv`."""
    blocks: list[Block] = [Heading(f"{task}: {len(runs)} run(s)")]
    keys = differing_keys(runs)
    gkeys = list(group_by) if group_by is not None else [k for k in keys if k != "seed"]
    groups = group_runs(runs, gkeys)
    mode, metric = runs[0].mode, runs[0].metric
    counts = {s: sum(r.status == s for r in runs) for s in
              ("finished", "pruned", "failed", "interrupted", "running")}
    blocks.append(Para(f"Swept keys: {', '.join(keys) or 'none'}; grouped by "
                       f"{', '.join(gkeys) or 'nothing (one group)'}; checkpoint metric "
                       f"{runs[0].monitor} ({mode}). "
                       + ", ".join(f"{n} {s}" for s, n in counts.items() if n)))
    blocks.append(run_table(runs, keys))
    table, primary = group_table(groups, mode, metric)
    blocks += [Heading("Groups (mean ± sample std over seeds, finished runs)", 3), table,
               Para("⚠ marks a group whose difference to the best group is no larger than the "
                    "spread over seeds (the larger standard deviation of the two): not a "
                    "difference the runs can show.")]
    note = mixed_code_note(groups)
    if note is not None:
        blocks.append(note)
    figs: list[Image] = []
    notes: list[Para] = []
    drawn = best_groups(groups, primary, mode, MAX_DRAWN_GROUPS)
    best_runs = [g.best_run() for g in drawn]
    if task == "charlm" and sampler is not None:  # drawn in the worker while figures are made
        sampler.submit([run.path for run in best_runs if run is not None])
    if len(drawn) < len(groups):  # more lines than colours: noise, not a figure
        notes.append(Para(
            f"Figures show the best {len(drawn)} of {len(groups)} groups by "
            f"{LABEL[primary]} {metric}; {len(groups) - len(drawn)} more groups not drawn "
            "(every group is in the table above)."))
    p = figures.learning_curves(drawn, metric, fig_dir / f"{task}_curves.png")
    if p:
        figs.append(Image(p, f"{task}: learning curves, one colour per group"))
    for key in figures.numeric_keys(groups):
        safe = key.replace("/", "_")
        p = figures.metric_vs_key(groups, key, primary, f"{LABEL[primary]} {metric}",
                                  fig_dir / f"{task}_{metric}_vs_{safe}.png",
                                  keep=drawn if len(drawn) < len(groups) else None)
        if p:
            figs.append(Image(p, f"{task}: {LABEL[primary]} {metric} against {key}, "
                                 "error bars = std over seeds"))
    reps = [(g.label, r) for g in best_groups(groups, primary, mode, MAX_HIST_RUNS)
            if (r := g.best_run()) is not None]
    p = figures.weight_histograms(reps, fig_dir / f"{task}_weight_histograms.png")
    if p:
        figs.append(Image(p, f"{task}: per-layer weight histograms of the last epoch, best run "
                             f"of each group side by side ({len(reps)} best groups)"))
    if figs:
        blocks.append(Heading("Figures", 3))
        blocks += notes + figs
    best = Group((), runs).best_run()
    if task == "cnn" and best is not None and "test/misclassified" in best.images:
        path = fig_dir / f"{task}_misclassified_{best.name}.png"
        path.write_bytes(best.images["test/misclassified"])
        blocks.append(Image(path, f"misclassified test photos of the best run ({best.path})"))
    if task == "charlm" and sampler is not None:
        answers = iter(sampler.results())
        samples = [next(answers) if run is not None else (None, "(no checkpoint)")
                   for run in best_runs]
        blocks += charlm_samples(drawn, samples, len(groups))
    return blocks, export_rows(task, runs, groups)


def charlm_samples(groups: list[Group], samples: list[tuple[Path | None, str]],
                   n_groups: int | None = None) -> list[Block]:
    """Each group's sample from its best checkpoint (seeded: comparable between groups); of
    `n_groups` in all, the others left out and said so."""
    blocks: list[Block] = [Heading(f"Samples primed with {PRIME!r} (best checkpoint of each "
                                   f"group, temperature {TEMPERATURE}, seed 0)", 3)]
    if n_groups is not None and n_groups > len(groups):
        blocks.append(Para(f"Samples of the best {len(groups)} of {n_groups} groups; "
                           f"{n_groups - len(groups)} more groups not sampled."))
    for g, (ckpt, text) in zip(groups, samples, strict=True):
        blocks.append(Pre(g.label if ckpt is None else f"{g.label} — {ckpt}", text))
    return blocks


def search_section(root: Path, fig_dir: Path) -> list[Block]:
    """An Optuna search (`optuna_study.json`, written by the hw2 sweeper after every batch):
    the best trial, every trial, and the objective against the trial number."""
    info_path = root / STUDY_FILE
    if not info_path.is_file():
        return []
    info = json.loads(info_path.read_text(encoding="utf-8"))
    trials = info.get("trials", [])
    metric, direction = str(info.get("metric")), str(info.get("direction"))
    keys = sorted({k for t in trials for k in t["params"]})
    again = {t["retry_of"]: t["number"] for t in trials if t.get("retry_of") is not None}
    rows = [[str(t["number"]), t["state"] + (f" (worker died, re-run as #{again[t['number']]})"
                                             if t["number"] in again else ""),
             fmt(t["value"]), *[fmt(v) if isinstance(v := t["params"].get(k), float) else
                                str(v if v is not None else "-") for k in keys]]
            for t in trials]
    blocks: list[Block] = [Heading(f"Search: study {info.get('study_name')!r}"),
                           Para(f"{metric} ({direction}), storage {info.get('storage')}; "
                                f"trial n ran in {root}/n; {len(trials)} trial(s), target "
                                f"{info.get('n_trials')} finished.")]
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    if done:
        sign = 1 if direction == "minimize" else -1
        bt = min(done, key=lambda t: sign * t["value"])
        blocks.append(Para(f"Best trial: #{bt['number']}, {metric} = {fmt(bt['value'])}, "
                           + ", ".join(f"{k}={v}" for k, v in bt["params"].items())))
    else:
        blocks.append(Para("No trial has completed yet."))
    blocks.append(Table(["trial", "state", "objective", *keys], rows))
    p = figures.objective_vs_trial(
        [(t["number"], t["value"] if t["state"] != "PRUNED" else t.get("last_value"), t["state"])
         for t in trials], direction, metric, fig_dir / "search_objective.png")
    if p:
        blocks.append(Image(p, "objective against the trial number (line: best so far; pruned "
                               "trials at their last reported validation)"))
    return blocks


def build_report(root: str | Path, group_by: Sequence[str] | None = None,
                 samples: bool = True) -> Path:
    """Write the report of every run under `root`; returns the path of `report.html`."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: give a run, sweep or log directory "
                                "(e.g. logs/charlm/multiruns/<time>)")
    # started first: it imports torch on the other core while the runs are read
    sampler = SampleWorker() if samples else None
    try:
        return _build(root, group_by, sampler)
    finally:
        if sampler is not None:
            sampler.close()


def _build(root: Path, group_by: Sequence[str] | None, sampler: SampleWorker | None) -> Path:
    runs = load_runs(root)
    if sampler is not None and not any(r.task == "charlm" for r in runs):
        sampler.kill()  # nothing to sample: do not wait for its imports
        sampler = None
    fig_dir = root / FIG_DIR
    fig_dir.mkdir(exist_ok=True)
    blocks: list[Block] = [Heading(f"Report: {root}", 1),
                           Para(f"{len(runs)} run(s), written {time.strftime('%Y-%m-%d %H:%M:%S')}"
                                " by `python -m hw2.report`.")]
    if not runs:
        blocks.append(Para("No runs found (a run directory holds .hydra/config.yaml)."))
    tasks: dict[str, list[Run]] = {}
    for run in runs:
        tasks.setdefault(run.task, []).append(run)
    rows: list[dict[str, Any]] = []
    for task, task_runs in tasks.items():
        task_blocks, task_rows = section(task, task_runs, fig_dir, group_by, sampler)
        blocks += task_blocks
        rows += task_rows
    blocks += search_section(root, fig_dir)
    write_exports(root, rows)
    atomic_write_text(root / "report.md", to_markdown(blocks, root))
    html_path = root / "report.html"
    atomic_write_text(html_path, to_html(blocks, f"hw2 report: {root.name}"))
    return html_path


def retried_trials(root: Path) -> set[str]:
    """Run dirs (trial numbers) of an Optuna search whose worker died and whose parameters
    ran again as another trial (`optuna_study.json`): not a job left to re-run."""
    try:
        info = json.loads((root / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {str(t["number"]) for t in info.get("trials", []) if t.get("stale")}


def unfinished_jobs(root: str | Path) -> list[tuple[Path, str, str]]:
    """(run dir, status, last error line) of every run under `root` that did not finish, from
    the runs' own records (cheap: no events are read); retried Optuna trials left out. At a
    sweep's end a job still `running` is another process's (its directory was locked, e.g. by
    a job of a killed earlier sweep that lives on): not finished by this sweep either."""
    out = []
    retried = retried_trials(Path(root))
    for run_dir in find_run_dirs(Path(root)):
        if run_dir.parent == Path(root) and run_dir.name in retried:
            continue
        record = read_record(run_dir) or {}
        status = status_of(record) if record else "unknown"
        if status == "running":
            out.append((run_dir, status, f"by pid {record.get('pid')} on host "
                                         f"{record.get('host')}, not this sweep"))
        elif status not in ("finished", "pruned"):  # pruned: Optuna's pruner stopped it
            out.append((run_dir, status, str(record.get("error") or "")))
    return out
