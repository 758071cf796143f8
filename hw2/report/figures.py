"""The homework's figures from the runs' events (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from hw2.report.groups import Group, Metric  # noqa: E402
from hw2.report.runs import Histogram, Run  # noqa: E402

COLORS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
METRIC_LABEL = {"final_val": "final val", "best_val": "best val", "test": "test"}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _series(run: Run, *tags: str) -> tuple[list[int], list[float]] | None:
    for tag in tags:
        pts = run.scalars.get(tag)
        if pts:
            return [s for s, _, _ in pts], [v for _, _, v in pts]
    return None


def learning_curves(groups: list[Group], metric: str, path: Path) -> Path | None:
    """Train and validation loss and metric against the step, one colour per group (every seed
    drawn, so the spread shows)."""
    panels = [("train loss", ("train/loss", "train/loss_step", "train/loss_epoch")),
              ("val loss", ("val/loss",)),
              (f"train {metric}", (f"train/{metric}", f"train/{metric}_step",
                                   f"train/{metric}_epoch")),
              (f"val {metric}", (f"val/{metric}",))]
    if not any(_series(r, *tags) for g in groups for r in g.runs for _, tags in panels):
        return None
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2).flatten()
    for ax, (title, tags) in zip(axes, panels, strict=True):
        for gi, group in enumerate(groups):
            color = COLORS[gi % len(COLORS)]
            labelled = False
            for run in group.runs:
                series = _series(run, *tags)
                if not series:
                    continue
                ax.plot(*series, color=color, alpha=0.8, lw=1.2,
                        marker="o" if len(series[0]) < 15 else None, ms=3,
                        label=None if labelled else group.label)
                labelled = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)),
                   fontsize=8)
    return _save(fig, path)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numeric_keys(groups: list[Group]) -> list[str]:
    """Group keys whose values are all numbers and that take more than one value."""
    keys = [k for k, _ in groups[0].key] if groups else []
    out = []
    for i, k in enumerate(keys):
        vals = [_number(g.key[i][1]) for g in groups]
        if all(v is not None for v in vals) and len(set(vals)) > 1:
            out.append(k)
    return out


def metric_vs_key(groups: list[Group], key: str, metric: Metric, label: str,
                  path: Path, keep: list[Group] | None = None) -> Path | None:
    """Mean metric against a numeric swept key, error bars = std over seeds; one line per
    combination of the other swept keys (with `keep`, only the lines holding one of them)."""
    idx = [k for k, _ in groups[0].key].index(key)

    def rest_of(g: Group) -> str:
        return ", ".join(f"{k}={v}" for j, (k, v) in enumerate(g.key) if j != idx)

    wanted = None if keep is None else {rest_of(g) for g in keep}
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for g in groups:
        if wanted is not None and rest_of(g) not in wanted:
            continue
        s = g.stat(metric)
        if s is None:
            continue
        lines.setdefault(rest_of(g), []).append((float(g.key[idx][1]), s.mean, s.std or 0.0))
    if not lines:
        return None
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (rest, pts) in enumerate(sorted(lines.items())):
        pts.sort()
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color=COLORS[i % len(COLORS)],
                    label=rest or None)
    xs_all = [x for pts in lines.values() for x, _, _ in pts]
    positive = [x for x in xs_all if x > 0]
    if positive and max(positive) / min(positive) >= 10:
        if min(xs_all) <= 0:  # e.g. L2 weight 0: linear near zero, log above
            ax.set_xscale("symlog", linthresh=min(positive))
        else:
            ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"{label} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if any(lines):
        ax.legend(fontsize=8)
    return _save(fig, path)


def rebin(h: Histogram, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """TensorBoard's buckets narrow exponentially towards 0, so their raw counts dip there;
    spread each bucket's count (as uniform within it) over `bins` equal bins on [min, max]."""
    edges = np.linspace(h.lo, h.hi, bins + 1) if h.hi > h.lo else np.array([h.lo - 0.5, h.lo + 0.5])
    out = np.zeros(len(edges) - 1)
    lefts = [h.lo, *h.limits[:-1]]
    for a, b, c in zip(lefts, h.limits, h.counts, strict=True):
        a, b = max(a, h.lo), min(b, h.hi)
        if c <= 0:
            continue
        if b <= a:  # a bucket that collapsed onto one value
            out[min(max(np.searchsorted(edges, a, side="right") - 1, 0), len(out) - 1)] += c
            continue
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0, None)
        out += c * overlap / (b - a)
    return edges, out


def weight_histograms(runs: list[tuple[str, Run]], path: Path, max_layers: int = 8) -> Path | None:
    """The last epoch's weight histogram of every layer (rows), runs side by side (columns), on
    a shared x range per layer: the report's "no L2 / with L2" figure."""
    tags: list[str] = []
    for _, run in runs:
        for tag in run.histograms:
            if tag.startswith("params/") and tag.rsplit("/", 1)[-1].startswith("weight") \
                    and tag not in tags:
                tags.append(tag)
    tags = tags[:max_layers]
    if not tags or not runs:
        return None
    titles = [textwrap.fill(label, 40) for label, _ in runs]  # a column is ~3 inches wide
    title_lines = max(t.count("\n") + 1 for t in titles)
    top = 0.45 + 0.16 * title_lines
    width, height = 3.2 * len(runs) + 1.3, 1.9 * len(tags) + top + 0.35
    fig = Figure(figsize=(width, height))
    # margins in inches, set once: constrained layout re-measures every tick of a grid this
    # large and took half of the figure's time
    fig.subplots_adjust(left=1.3 / width, right=1 - 0.15 / width, bottom=0.35 / height,
                        top=1 - top / height, wspace=0.12, hspace=0.45)
    axes = fig.subplots(len(tags), len(runs), squeeze=False, sharex="row")
    for row, tag in enumerate(tags):
        for col, (_, run) in enumerate(runs):
            ax = axes[row][col]
            h = run.histograms.get(tag)
            if h is not None and h.counts:
                edges, counts = rebin(h)
                ax.stairs(counts, edges, fill=True, alpha=0.6, color=COLORS[col % 10])
                ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
            if col == 0:
                ax.set_ylabel(tag.removeprefix("params/"), fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("weights at the last epoch (TensorBoard histograms)", fontsize=10)
    return _save(fig, path)


def objective_vs_trial(trials: list[tuple[int, float | None, str]], direction: str,
                       metric: str, path: Path) -> Path | None:
    """An Optuna search: each trial's objective and the best so far; pruned trials at their
    last reported value (`value`, their state PRUNED), failed ones on the best line."""
    done = [(n, v) for n, v, state in trials if v is not None and state == "COMPLETE"]
    if not done:
        return None
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot([n for n, _ in done], [v for _, v in done], "o", label="trial")
    best, running = [], None
    for _, v in done:
        running = v if running is None else (min if direction == "minimize" else max)(running, v)
        best.append(running)
    ax.step([n for n, _ in done], best, where="post", color="C3", label="best so far")
    pruned = [(n, v) for n, v, state in trials if state == "PRUNED" and v is not None]
    if pruned:
        ax.plot([n for n, _ in pruned], [v for _, v in pruned], "v", color="C7", label="pruned")
    failed = [n for n, v, state in trials if state not in ("COMPLETE", "PRUNED")]
    if failed:
        ax.plot(failed, [best[-1]] * len(failed), "x", color="k", label="failed/unfinished")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
