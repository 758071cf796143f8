"""Runs that differ only in the seed form a group: mean, standard deviation and n of each metric,
and whether a group's difference to the best group is larger than the spread over seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from hw2.report.runs import Run

Metric = Literal["final_val", "best_val", "test"]


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation (n-1); None for n=1
    n: int


def stat(values: list[float | None]) -> Stat | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None,
                len(vals))


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]  # ((swept key, value), ...) shared by the runs
    runs: list[Run]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key) or "all runs"

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]

    def stat(self, metric: Metric) -> Stat | None:
        """Over the finished runs only: a crashed run's partial numbers would bias the mean."""
        return stat([getattr(r, metric) for r in self.finished])

    @property
    def commits(self) -> list[str]:
        """The code its runs were made by, when that is more than one commit (or diff): such a
        group may compare code changes rather than seeds."""
        code: set[tuple[str, str]] = set()
        for run in self.runs:
            code |= run.code
        if len(code) < 2:
            return []
        return sorted(c[:7] + ("+diff " + d[:6] if d else "") for c, d in code)

    def best_run(self) -> Run | None:
        """The run with the best validation metric (finished ones first)."""
        pool = [r for r in self.finished if r.best_val is not None] or \
               [r for r in self.runs if r.best_val is not None]
        if not pool:
            return None
        sign = 1 if pool[0].mode == "min" else -1
        return min(pool, key=lambda r: sign * r.best_val)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Groups by the values of `keys` (the swept keys without `seed` by default), in the order
    the runs come."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = tuple((k, run.value(k)) for k in keys)
        groups.setdefault(key, Group(key, [])).runs.append(run)
    return list(groups.values())


def primary_metric(groups: list[Group]) -> Metric:
    """The test metric when every group has one, else the best validation metric."""
    if groups and all(g.stat("test") is not None for g in groups):
        return "test"
    return "best_val"


@dataclass
class Comparison:
    delta: float | None  # this group's mean minus the best group's mean
    within_spread: bool | None  # |delta| <= the larger of the two seed std's (None: unknown)
    is_best: bool


def compare(groups: list[Group], metric: Metric, mode: str) -> list[Comparison]:
    """Each group against the best one by `metric`. A difference no larger than the spread over
    seeds (the larger of the two standard deviations) is not a difference one can claim."""
    stats = [g.stat(metric) for g in groups]
    scored = [(i, s) for i, s in enumerate(stats) if s is not None]
    if not scored:
        return [Comparison(None, None, False) for _ in groups]
    sign = 1 if mode == "min" else -1
    best_i, best = min(scored, key=lambda t: sign * t[1].mean)
    out = []
    for i, s in enumerate(stats):
        if s is None:
            out.append(Comparison(None, None, False))
            continue
        delta = s.mean - best.mean
        spreads = [x.std for x in (s, best) if x.std is not None]
        within = None if i == best_i or not spreads else abs(delta) <= max(spreads)
        out.append(Comparison(delta, within, i == best_i))
    return out
