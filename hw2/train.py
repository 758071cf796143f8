"""The whole training path: config -> data, model, callbacks, loggers, trainer -> fit -> test."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import TensorBoardLogger

from hw2.gpu_slots import claim_gpu
from hw2.run_record import recorded_run
from hw2.runtime import fast_precision, tune_malloc, uses_cuda

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a `_target_` of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values()
            if isinstance(node, DictConfig) and "_target_" in node]


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """data/model/trainer keys and the seed as flat `group.key` scalars for TensorBoard's
    HParams view (targets and nested objects left out)."""
    out: dict[str, Any] = {"seed": cfg.get("seed")}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k != "_target_" and not str(k).startswith("_"):
                    walk(f"{prefix}.{k}", v)
        elif isinstance(node, list):
            out[prefix] = str(node)
        else:
            out[prefix] = node

    for group in ("data", "model", "trainer"):
        node = OmegaConf.to_container(cfg.get(group), resolve=True) if cfg.get(group) else {}
        for k, v in node.items():
            if k in ("_target_", "plugins", "default_root_dir"):
                continue
            walk(f"{group}.{k}", v)
    return {k: v for k, v in out.items() if v is not None}


def describe(cfg: DictConfig) -> str:
    """One screen of the composed config: the chosen groups, then model and data keys."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        picked = " ".join(f"{k}={v}" for k, v in choices.items()
                          if v is not None and not k.startswith("hydra"))
    except ValueError:
        picked = ""
    keys = {g: {k: v for k, v in OmegaConf.to_container(cfg[g]).items() if k != "_target_"}
            for g in ("model", "data") if g in cfg}
    return f"{picked}\n{OmegaConf.to_yaml(keys)}"


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}


def run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics. `extra_callbacks`
    join the configured ones (benchmarks, notebooks).

    With `spread_gpus=true` (launcher=local_gpus) the job first locks a free GPU of this
    machine and trains on it alone."""
    with recorded_run(cfg.paths.output_dir) as record:
        if cfg.get("spread_gpus") and torch.cuda.is_available():
            with claim_gpu(Path(cfg.paths.log_dir) / ".gpu_locks",
                           torch.cuda.device_count()) as gpu:
                with open_dict(cfg):
                    cfg.trainer.devices = [gpu]
                log.info("sweep job on GPU %d", gpu)
                record.update(device=f"cuda:{gpu}")
                metrics = _run(cfg, extra_callbacks)
        else:
            record.update(device=str(cfg.trainer.get("accelerator", "auto")))
            metrics = _run(cfg, extra_callbacks)
        record.update(metrics=metrics)
        return metrics


def _run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback]) -> dict[str, float]:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if cfg.get("tune_malloc") and not uses_cuda(accelerator):
        tune_malloc()  # a CPU measure (bench/framework_tax.py); not measured helpful on a GPU
    if cfg.trainer.get("precision") == "auto":
        with open_dict(cfg):
            cfg.trainer.precision = fast_precision(str(cfg.trainer.get("accelerator", "auto")))
        log.info("trainer.precision=auto -> %s on this machine", cfg.trainer.precision)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} is not a file: give a checkpoint written "
                                "by a run, e.g. logs/<task>/runs/<time>/checkpoints/last.ckpt")
    if not cfg.get("train") and not cfg.get("test"):
        raise ValueError("train=false and test=false: nothing to do")

    log.info("config:\n%s", describe(cfg))
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model: pl.LightningModule = instantiate(
        cfg.model, **datamodule.model_kwargs(), _convert_="all"
    )
    callbacks = instantiate_group(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )

    metrics: dict[str, float] = {}
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(scalars(trainer.callback_metrics))
    if cfg.get("test"):
        if cfg.get("train"):
            cb = trainer.checkpoint_callback
            best = cb.best_model_path if cb is not None else ""
            test_ckpt = best or None
            if not best:
                log.warning("no best checkpoint (no checkpoint callback): testing current weights")
        else:
            if ckpt_path is None:
                raise ValueError("train=false needs ckpt_path=<checkpoint> to test")
            test_ckpt = ckpt_path
        trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)
        metrics.update(scalars(trainer.callback_metrics))

    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "best_model_score", None) is not None:
        metrics[f"best/{cb.monitor}"] = float(cb.best_model_score)
    final = {f"hp/{k}": v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/"))}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # HParams tab: config beside final metrics
            logger.log_hyperparams(flat_hparams(cfg), metrics=final)
        else:
            logger.log_hyperparams(flat_hparams(cfg))
        logger.save()
    report(cfg, trainer, metrics)
    return metrics


def report(cfg: DictConfig, trainer: pl.Trainer, metrics: Mapping[str, float]) -> None:
    """Where the run went and how it ended, printed last so a user sees it."""
    if not trainer.is_global_zero:
        return
    lines = ["", "final metrics:"]
    lines += [f"  {k:<20} {v:.4f}" for k, v in sorted(metrics.items())
              if k.startswith(("train/", "val/", "test/", "best/"))]
    out = Path(cfg.paths.output_dir)
    lines.append(f"run directory: {out}")
    for cb in trainer.checkpoint_callbacks:
        if cb.best_model_path:
            kind = f"best by {cb.monitor}" if cb.monitor else "last"
            lines.append(f"{kind} checkpoint: {cb.best_model_path}"
                         + ("" if cb.monitor else " (resume: ckpt_path=<it>)"))
    if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        lines.append(f"inspect: tensorboard --logdir {out.parent}")
    print("\n".join(lines), flush=True)
