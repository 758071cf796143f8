"""Find the runs under a directory and read what a report needs from each: its composed config
(`.hydra/`), its record (`run.json`) and its TensorBoard events."""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hw2.runs.layout import CHECKPOINT_DIR
from hw2.runs.provenance import code_identities, commit_label
from hw2.runs.record import DONE, read_record, status_of

SKIP_PARTS = {".submitit", "report_figures", CHECKPOINT_DIR, "tensorboard"}


@dataclass
class Histogram:
    """The last histogram of one parameter: bucket right edges and counts."""

    step: int
    lo: float
    hi: float
    num: int
    limits: list[float]
    counts: list[float]


@dataclass
class Events:
    """What a report draws from a run's TensorBoard events."""

    scalars: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Run:
    """One run directory. Its numbers (final, best and test metric, parameters, steps) come
    from run.json when the run ended normally (it records them); its events are read only when
    a figure draws them or the record lacks a number: a report over a thousand runs reads a
    few runs' events, not every one."""

    path: Path
    task: str
    config: Mapping[str, Any]  # the composed config as plain data (.hydra/config.yaml)
    choices: dict[str, str]
    overrides: list[str]
    record: dict[str, Any] | None
    status: str
    monitor: str  # e.g. val/bpc
    mode: str  # min | max
    events_dir: Path | None = None  # <run>/tensorboard, read on first use
    _events: Events | None = field(default=None, repr=False)

    @property
    def events(self) -> Events:
        if self._events is None:
            self._events = (read_events(self.events_dir) if self.events_dir is not None
                            and self.events_dir.is_dir() else Events())
        return self._events

    @property
    def scalars(self) -> dict[str, list[tuple[int, float, float]]]:
        return self.events.scalars

    @scalars.setter
    def scalars(self, value: dict[str, list[tuple[int, float, float]]]) -> None:
        self.events.scalars = value

    @property
    def histograms(self) -> dict[str, Histogram]:
        return self.events.histograms

    @property
    def images(self) -> dict[str, bytes]:
        return self.events.images

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metric(self) -> str:
        """`bpc` / `acc`: the task's metric, from the checkpoint monitor."""
        return self.monitor.split("/", 1)[-1]

    def values(self, tag: str) -> list[float]:
        return [v for _, _, v in self.scalars.get(tag, [])]

    @property
    def recorded(self) -> dict[str, float] | None:
        """The final metrics run.json holds for a run that ended normally (finished or
        pruned: `hw2.train` records them, then the status); None otherwise."""
        metrics = (self.record or {}).get("metrics")
        if self.status not in DONE or not isinstance(metrics, dict):
            return None
        return metrics

    @property
    def final_val(self) -> float | None:
        rec = self.recorded
        if rec is not None and self.monitor in rec:
            return float(rec[self.monitor])
        vals = self.values(self.monitor)
        return vals[-1] if vals else None

    @property
    def best_val(self) -> float | None:
        rec = self.recorded
        key = f"best/{self.monitor}"  # the checkpoint callback's best score
        if rec is not None and key in rec and math.isfinite(float(rec[key])):
            return float(rec[key])
        vals = [v for v in self.values(self.monitor) if math.isfinite(v)]
        if not vals:
            return None
        return min(vals) if self.mode == "min" else max(vals)

    @property
    def test(self) -> float | None:
        rec = self.recorded
        if rec is not None:  # a run that recorded no test metric ran no test
            value = rec.get(f"test/{self.metric}")
            return None if value is None else float(value)
        vals = self.values(f"test/{self.metric}")
        return vals[-1] if vals else None

    @property
    def params(self) -> int | None:
        """Parameter count: as recorded, else the elements of the last histogram of every
        parameter."""
        recorded = (self.record or {}).get("params")
        if isinstance(recorded, int):
            return recorded
        nums = [h.num for tag, h in self.histograms.items() if tag.startswith("params/")]
        return int(sum(nums)) if nums else None

    @property
    def steps(self) -> int | None:
        """Optimiser steps: the trainer's global step as the run recorded it at its end, else
        (a run still going or killed) the last step its events reached."""
        recorded = ((self.record or {}).get("metrics") or {}).get("trainer/global_step")
        if recorded is not None:
            return int(recorded)
        steps = [s for tag, pts in self.scalars.items() if not tag.startswith("hp/")
                 for s, _, _ in pts]
        return max(steps) + 1 if steps else None

    @property
    def wall_s(self) -> float | None:
        """Seconds of the last attempt (still counting while it runs)."""
        rec = self.record or {}
        start = rec.get("started")
        if start is None:
            return None
        end = rec.get("ended") or (time.time() if self.status == "running" else None)
        return None if end is None else float(end) - float(start)

    @property
    def error(self) -> str | None:
        return (self.record or {}).get("error")

    @property
    def commit(self) -> str | None:
        """Short commit of the code, `+dirty` for uncommitted changes; None when not recorded."""
        return commit_label(self.record)

    @property
    def code(self) -> set[tuple[str, str]]:
        """(commit, diff hash) of the code of each attempt: runs by the same code share it."""
        return code_identities(self.record)

    @property
    def attempts(self) -> int:
        return int((self.record or {}).get("attempts", 0))

    def value(self, key: str) -> str:
        """This run's value of a swept key: a config group choice, an override, or the config."""
        if key in self.choices:
            return str(self.choices[key])
        for ov in self.overrides:
            k, sep, v = ov.lstrip("+~").partition("=")
            if sep and k == key:
                return v
        found = select(self.config, key)
        return "-" if found is None or isinstance(found, Mapping) else str(found)


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under `root` (or `root` itself) holding a composed config."""
    root = Path(root)
    found = []
    for cfg in sorted(root.rglob(".hydra/config.yaml")):
        run_dir = cfg.parent.parent
        if not SKIP_PARTS.intersection(run_dir.relative_to(root).parts):
            found.append(run_dir)
    return sorted(found, key=sort_key)


def sort_key(path: Path) -> tuple:
    """Job directories 0, 1, ..., 10 in numeric order."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def _yaml(path: Path) -> Any:
    """A YAML file as plain data, parsed by libyaml's C loader when present (OmegaConf.load's
    pure-Python parse is most of the cost of reading a thousand runs' configs)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader


def _choices_text(text: str) -> str | None:
    """The `hydra.runtime.choices` block of a hydra.yaml as Hydra writes it (two-space indents),
    dedented; None when the file is laid out otherwise. The block is a few lines of a file of
    hundreds: parsing it alone halves the cost of reading a run's .hydra/."""
    start = text.find("\n  runtime:\n")
    start = -1 if start < 0 else text.find("\n    choices:\n", start)
    if start < 0:
        return None
    lines = []
    for line in text[start + len("\n    choices:\n"):].splitlines():
        if not line.startswith("      "):
            break
        lines.append(line[6:])
    return "\n".join(lines) + "\n"


def _choices(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    import yaml

    text = path.read_text(encoding="utf-8")
    block = _choices_text(text)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if block is not None:
        node = yaml.load(block, Loader=loader) or {}  # noqa: S506 - a safe loader
    else:
        node = ((yaml.load(text, Loader=loader) or {}).get("hydra")  # noqa: S506
                or {}).get("runtime", {}).get("choices")
    if not isinstance(node, dict):
        return {}
    return {str(k): str(v) for k, v in node.items() if not str(k).startswith("hydra")}


def select(config: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted `key` of a composed config as plain data; None where absent. An
    interpolation (`${...}`) is resolved by OmegaConf, made for that key alone: building an
    OmegaConf tree of every run's config would be most of a large report's time."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, str) and "${" in node:
        try:
            return OmegaConf.select(OmegaConf.create(dict(config)), key, default=None,
                                    throw_on_missing=False)
        except Exception:  # unresolvable interpolation (${hydra:...}) outside Hydra
            return None
    return node


def _task(config: Mapping[str, Any], choices: dict[str, str]) -> str:
    if "task" in choices:
        return choices["task"]
    target = str(select(config, "model._target_") or "")
    return "charlm" if "charlm" in target.lower() else "cnn" if target else "unknown"


def event_records(path: Path) -> Iterator[bytes]:
    """The records of one event file (TFRecord framing: length, its CRC, data, its CRC), read
    in one go; a record cut short (a writer killed mid-write) ends the file. The CRCs are not
    checked: a damaged record fails to parse and ends the file as well."""
    data = path.read_bytes()
    pos, size = 0, len(data)
    while pos + 12 <= size:
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length
        if end + 4 > size:
            return
        yield data[pos + 12:end]
        pos = end + 4


def read_events(tb_dir: Path) -> Events:
    """Scalars (all points), the last histogram and the last image of every tag, merged over the
    run's event files (several per run: fit, test, hparams, resumed attempts): where two give a
    step, the later write wins. Read straight from the records with the protobuf parser: what
    TensorBoard's EventAccumulator keeps (scalars written as `simple_value`, a restart's
    SessionLog.START dropping the file's later steps), at a fraction of its cost."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    scalars: dict[str, dict[int, tuple[float, float]]] = {}
    last_hist: dict[str, tuple[float, Histogram]] = {}
    last_img: dict[str, tuple[float, bytes]] = {}
    for path in sorted(tb_dir.rglob("events.out.tfevents*")):
        mine: dict[str, dict[int, tuple[float, float]]] = {}
        for record in event_records(path):
            try:
                ev = Event.FromString(record)
            except DecodeError:
                break
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                for points in mine.values():  # a restart at this step: later ones are stale
                    for step in [s for s in points if s >= ev.step]:
                        del points[step]
                continue
            for v in ev.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    points = mine.setdefault(v.tag, {})
                    if ev.step not in points or points[ev.step][0] <= ev.wall_time:
                        points[ev.step] = (ev.wall_time, v.simple_value)
                elif kind == "histo":
                    if v.tag not in last_hist or last_hist[v.tag][0] <= ev.wall_time:
                        h = v.histo
                        last_hist[v.tag] = (ev.wall_time, Histogram(
                            ev.step, h.min, h.max, int(h.num), list(h.bucket_limit),
                            list(h.bucket)))
                elif kind == "image" and (v.tag not in last_img
                                          or last_img[v.tag][0] <= ev.wall_time):
                    last_img[v.tag] = (ev.wall_time, v.image.encoded_image_string)
        for tag, points in mine.items():  # files merged: the later write of a step wins
            merged = scalars.setdefault(tag, {})
            for step, (wall, value) in points.items():
                if step not in merged or merged[step][0] <= wall:
                    merged[step] = (wall, value)
    return Events({t: [(s, w, v) for s, (w, v) in sorted(p.items())] for t, p in scalars.items()},
                  {t: h for t, (_, h) in last_hist.items()},
                  {t: b for t, (_, b) in last_img.items()})


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    config = _yaml(run_dir / ".hydra" / "config.yaml") or {}
    ov_path = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in _yaml(ov_path) or []] if ov_path.is_file() else []
    choices = _choices(run_dir)
    task = _task(config, choices)
    record = read_record(run_dir)
    monitor = select(config, "callbacks.model_checkpoint.monitor")
    mode = select(config, "callbacks.model_checkpoint.mode")
    if not isinstance(monitor, str) or monitor == "???":
        monitor, mode = ("val/bpc", "min") if task == "charlm" else ("val/acc", "max")
    return Run(run_dir, task, config, choices, overrides, record,
               status_of(record) if record else "unknown", monitor, str(mode or "min"),
               events_dir=run_dir / "tensorboard")


def load_runs(root: Path) -> list[Run]:
    return [load_run(d) for d in find_run_dirs(root)]


def override_keys(runs: Iterable[Run]) -> list[str]:
    """Keys set on the command line or by a sweep in any run, in first-seen order."""
    keys: dict[str, None] = {}
    for run in runs:
        for ov in run.overrides:
            k, sep, _ = ov.lstrip("+~").partition("=")
            # optuna_trial: an Optuna trial's number, the same as its run's name
            if sep and not k.startswith("hydra.") and k != "optuna_trial":
                keys[k] = None
    return list(keys)


def differing_keys(runs: list[Run]) -> list[str]:
    """The override keys whose value is not the same in every run."""
    return [k for k in override_keys(runs) if len({r.value(k) for r in runs}) > 1]
