"""A sweep checked before it starts: every job's config composed, every `_target_` imported
and its keys bound to the target's signature, data paths and the GPU pool checked, then a table
of the jobs with an estimated cost from a few timed steps. A bad job stops the sweep before any
job runs, with every error listed at once (`preflight=true`, the default for multiruns)."""

from __future__ import annotations

import difflib
import inspect
import itertools
import logging
import os
import sys
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def job_overrides(sweep_params: Mapping[str, Any], arguments: Sequence[str]) -> list[list[str]]:
    """The jobs a grid sweep runs: the cartesian product of the sweep overrides
    (`hydra.sweeper.params` and the command line, `a=1,2`, `range(...)`, `choice(...)`), each
    job's list in the order Hydra's basic sweeper gives them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [f"{k}={v}" for k, v in sweep_params.items()] + list(arguments)
    parsed = OverridesParser.create().parse_overrides(given)
    final: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            final[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            final[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*final.values())]


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(dotted key, node) of every config node with a `_target_`, outermost first."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from target_nodes(item, f"{path}[{i}]")


def _accepts(value: Any, hint: Any) -> bool:
    """Whether a plain config value fits a simple type hint; True where unsure."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and isinstance(value, (str, int, float)):
        # a plain value for a class (a tensor, a device, a path): only itself or a path string
        if isinstance(value, hint):
            return True
        return isinstance(value, str) and (hint is object or issubclass(hint, os.PathLike))
    return True  # containers, generics, callables: not checked


def check_node(key: str, node: DictConfig) -> list[str]:
    """Errors of one `_target_` node: the target imports, its keys are arguments of it, and
    plain values have the annotated types."""
    target = str(node._target_)
    try:
        obj = get_object(target)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
        return [f"{key}._target_={target}: cannot be imported ({type(e).__name__}: {e})"]
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - unresolvable annotations: types unchecked
        hints = {}
    errors = []
    for name in node:
        if name in HYDRA_KEYS:
            continue
        if name not in params:
            if not takes_any:
                close = difflib.get_close_matches(str(name), list(params), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                errors.append(f"{key}.{name} is not an argument of {target}{hint}")
            continue
        try:
            plain = node[name]
        except OmegaConfBaseException:  # e.g. ${hydra:...}, known only inside the job
            continue
        if isinstance(plain, (DictConfig, ListConfig)):
            continue
        if name in hints and not _accepts(plain, hints[name]):
            errors.append(f"{key}.{name}={plain!r} does not fit {target}'s {name}: "
                          f"{getattr(hints[name], '__name__', hints[name])}")
    return errors


def check_paths(cfg: DictConfig) -> list[str]:
    """Data files and folders a job reads: `data.root` and `data.corpus.*path`."""
    errors = []
    data = cfg.get("data") or {}
    candidates = {"data.root": data.get("root")}
    corpus = data.get("corpus") if isinstance(data, DictConfig) else None
    if isinstance(corpus, DictConfig):
        candidates |= {f"data.corpus.{k}": corpus.get(k) for k in corpus
                       if str(k).endswith("path")}
    for key, value in candidates.items():
        if value and not Path(str(value)).exists() and not data.get("download", False):
            errors.append(f"{key}={value} does not exist")
    return errors


def check_gpus(cfg: DictConfig) -> list[str]:
    if not cfg.get("spread_gpus"):
        return []
    from hw2.sweeps.gpu_slots import gpu_pool

    try:
        pool = gpu_pool(cfg.get("gpu_pool"))
    except ValueError as e:
        return [str(e)]
    return [] if pool else ["launcher=local_gpus finds no GPU: set gpu_pool or "
                            "CUDA_VISIBLE_DEVICES"]


def check_job(cfg: DictConfig) -> list[str]:
    """Every error of one job's composed config."""
    if cfg.trainer.get("precision") == "auto":  # hw2's own value, resolved before the Trainer
        from hw2.utils.runtime import fast_precision

        with open_dict(cfg):
            cfg.trainer.precision = fast_precision(str(cfg.trainer.get("accelerator", "auto")))
    errors = [e for key, node in target_nodes(cfg) if not key.startswith("hydra")
              for e in check_node(key, node)]
    return errors + check_paths(cfg) + check_gpus(cfg)


def _datamodule(cfg: DictConfig, cache: dict[str, Any]) -> Any:
    """The job's data module, set up for fitting; jobs with the same data config share one."""
    from hydra.utils import instantiate

    key = OmegaConf.to_yaml(cfg.data, resolve=True)
    if key not in cache:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        cache[key] = datamodule
    return cache[key]


def planned_steps(cfg: DictConfig, cache: dict[str, Any]) -> int:
    """The training steps the job will run: `trainer.max_steps`, else epochs x batches."""
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps and max_steps > 0:
        return int(max_steps)
    per_epoch = len(_datamodule(cfg, cache).train_dataloader())
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, float) and limit <= 1:
        per_epoch = max(int(per_epoch * limit), 1)
    elif isinstance(limit, int):
        per_epoch = min(per_epoch, limit)
    return per_epoch * max(int(cfg.trainer.get("max_epochs") or 1), 1)


def seconds_per_step(cfg: DictConfig, steps: int, cache: dict[str, Any]) -> float:
    """Seconds per training step of the job on this machine: `steps` steps timed after one
    warm-up step, with the job's own data, model and precision, nothing logged or saved."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.stamps.append(time.perf_counter())

    datamodule = _datamodule(cfg, cache)
    model = instantiate(cfg.model, **datamodule.model_kwargs(), _convert_="all")
    precision = cfg.trainer.get("precision") or "32-true"
    if precision == "auto":
        from hw2.utils.runtime import fast_precision

        precision = fast_precision(str(cfg.trainer.get("accelerator", "auto")))
    clock = Clock()
    trainer = pl.Trainer(max_steps=steps + 1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[clock], devices=1,
                         accelerator=cfg.trainer.get("accelerator", "auto"), precision=precision)
    trainer.fit(model, datamodule=datamodule)
    gaps = [b - a for a, b in itertools.pairwise(clock.stamps)]
    return sum(gaps) / len(gaps) if gaps else float("nan")


def rate_key(cfg: DictConfig) -> str:
    """What a job's step time depends on: its network, data and precision (not the optimiser's
    or the loss's settings), so jobs that differ only in those share one timing."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    net = model.get("net", model) if isinstance(model, dict) else model
    parts = {"net": net, "data": OmegaConf.to_container(cfg.data, resolve=True),
             "precision": cfg.trainer.get("precision"),
             "accelerator": cfg.trainer.get("accelerator")}
    return OmegaConf.to_yaml(OmegaConf.create(parts))


def differing(jobs: Sequence[Sequence[str]]) -> list[str]:
    """The override keys whose value differs between jobs."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for item in job:
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1]


def job_label(job: Sequence[str], keys: Sequence[str]) -> str:
    """The overrides of a job that tell it from the others (all of them when none differ)."""
    own = [item for item in job if item.partition("=")[0] in keys]
    return " ".join(own or job)


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Preflight(Callback):
    """Hydra callback: `on_multirun_start`, check every job of a grid sweep (the base config of
    other sweepers), print the table, and exit 2 listing every error before any job runs."""

    def __init__(self, enabled: bool = True, timed_steps: int = 3, max_timed: int = 8) -> None:
        self.enabled, self.timed_steps, self.max_timed = enabled, timed_steps, max_timed

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or not config.get("preflight", True):
            return
        from hydra import compose
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = config.hydra
        arguments = list(hydra_cfg.overrides.task)
        grid = "BasicSweeper" in str(hydra_cfg.sweeper.get("_target_", ""))
        params = hydra_cfg.sweeper.get("params")
        if grid:
            jobs = job_overrides(OmegaConf.to_container(params) if params else {}, arguments)
        else:  # a search samples its jobs as it goes: check the fixed part of the command
            jobs = [[a for a in arguments if "," not in a and "(" not in a]]
        keys = differing(jobs)
        errors: dict[str, list[int]] = {}  # message -> the jobs it concerns
        configs = []
        HydraConfig.instance().set_config(config)  # ${hydra:...} in paths resolves
        for i, job in enumerate(jobs):
            try:
                cfg = compose(config_name=hydra_cfg.job.config_name, overrides=job)
            except Exception as e:  # noqa: BLE001 - Hydra's composition errors name the key
                errors.setdefault(f"{type(e).__name__}: {e}", []).append(i)
                continue
            configs.append(cfg)
            for message in check_job(cfg):
                errors.setdefault(message, []).append(i)
        lines = [f"preflight: {len(jobs)} job(s){' (search: fixed part)' if not grid else ''}"]
        if errors:
            lines += ["preflight found errors; no job was started:"]
            for message, which in errors.items():
                if len(which) == len(jobs) and len(jobs) > 1:
                    where = f"all {len(jobs)} jobs"
                else:
                    where = ", ".join(f"job {i} ({job_label(jobs[i], keys)})" for i in which)
                lines.append(f"  {where}: {message}")
            lines.append("fix the config or the command (preflight=false skips this check)")
            print("\n".join(lines), file=sys.stderr, flush=True)
            sys.exit(2)
        cache: dict[str, Any] = {}
        rates: dict[str, float] = {}  # rate_key -> s/step, timed once per distinct network
        failures: list[str] = []
        header = ["job", *keys, "steps", "s/step", "est. time"]
        rows = []
        for i, (job, cfg) in enumerate(zip(jobs, configs, strict=True)):
            values = dict(item.partition("=")[::2] for item in job)
            steps = planned_steps(cfg, cache)
            key = rate_key(cfg)
            if self.timed_steps > 0 and key not in rates and len(rates) < self.max_timed:
                try:
                    rates[key] = seconds_per_step(cfg, self.timed_steps, cache)
                except Exception as e:  # noqa: BLE001 - a timing failure is not a config error
                    rates[key] = float("nan")
                    failures.append(f"job {i}: no estimate ({type(e).__name__}: {e})")
            per_step = rates.get(key, float("nan"))
            timed = per_step == per_step
            rows.append([str(i), *(values.get(k, "") for k in keys), str(steps),
                         f"{per_step:.3f}" if timed else "?",
                         fmt_seconds(steps * per_step) if timed else "?"])
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines += ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                  for r in rows]
        if rates:
            lines.append(f"  (s/step: {self.timed_steps} training steps timed here for each of "
                         f"{len(rates)} distinct network/data config(s); est. time counts "
                         "training steps only, not start-up, validation or test)")
        lines += [f"  {f}" for f in failures]
        print("\n".join(lines), flush=True)

