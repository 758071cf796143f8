"""The whole training path: config -> data, model, callbacks, loggers, trainer -> fit -> test."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from hw2.runs.checkpoints import check_resume_data, load_for_data, resume_hparams
from hw2.runs.record import job_overrides, recorded_run
from hw2.runs.resume import keep_csv_rows, logging_step, resolve_checkpoint
from hw2.utils.ranks import local_rank
from hw2.utils.runtime import fast_event_checksums, fast_precision, tune_malloc, uses_cuda

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
    join the configured ones (benchmarks, notebooks). Sweep logic (skipping finished jobs, a
    GPU per job) lives in `hw2.sweeps.job.run_job`, which calls this."""
    with recorded_run(cfg.paths.output_dir) as record:
        with open_dict(cfg):  # resume=auto and Lightning's names -> the file it starts from
            cfg.ckpt_path = resolve_checkpoint(cfg)
        # gpu: what this job was given (local_gpus, Ray, SLURM all set CUDA_VISIBLE_DEVICES)
        record.update(overrides=job_overrides(), resumed_from=cfg.ckpt_path,
                      device=str(cfg.trainer.get("accelerator", "auto")),
                      gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
        metrics = _run(cfg, extra_callbacks)
        record.update(metrics=metrics)
        return metrics


def _run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback]) -> dict[str, float]:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if cfg.get("tune_malloc") and not uses_cuda(accelerator):
        tune_malloc()  # a CPU measure (bench/framework_tax.py); not measured helpful on a GPU
    fast_event_checksums()  # TensorBoard's record checksums in C, not pure Python
    if cfg.trainer.get("precision") == "auto":
        with open_dict(cfg):
            cfg.trainer.precision = fast_precision(str(cfg.trainer.get("accelerator", "auto")))
        log.info("trainer.precision=auto -> %s on this machine", cfg.trainer.precision)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    ckpt_path = cfg.get("ckpt_path")  # resolved by run()
    if not cfg.get("train") and not cfg.get("test"):
        raise ValueError("train=false and test=false: nothing to do")

    log.info("config:\n%s", describe(cfg))
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    if cfg.get("train"):
        # a resumed fit: the checkpoint is of this task (before the data loads) and of this data
        resumed = resume_hparams(ckpt_path, cfg.model._target_) if ckpt_path not in (
            None, "hpc") else None
        if local_rank() == 0:  # Lightning's contract: render/download once per node, not per rank
            datamodule.prepare_data()
        datamodule.setup("fit")
        if resumed is not None:
            check_resume_data(ckpt_path, resumed, datamodule)
        model: pl.LightningModule = instantiate(
            cfg.model, **datamodule.model_kwargs(), _convert_="all"
        )
    elif ckpt_path is None:
        raise ValueError("train=false needs ckpt_path=<checkpoint> to test")
    else:  # test-only: the checkpoint's own network, checked against the data
        model = load_for_data(ckpt_path, cfg.model._target_, datamodule)
    callbacks = instantiate_group(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = make_loggers(cfg, purge_step=logging_step(ckpt_path) if cfg.get("train") else None)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )

    metrics: dict[str, float] = {}
    if cfg.get("train"):
        log_hparams_at_start(cfg, trainer, resuming=ckpt_path is not None)
        fit(cfg, trainer, model, datamodule, ckpt_path)
        metrics.update(scalars(trainer.callback_metrics))
    if cfg.get("test"):
        if cfg.get("train"):
            cb = trainer.checkpoint_callback
            test_ckpt = "best" if cb is not None and cb.best_model_path else None
            if test_ckpt is None:
                log.warning("no best checkpoint (no validation, or callbacks=none): testing "
                            "the last weights")
        else:
            test_ckpt = None  # load_for_data loaded the weights
        trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)
        metrics.update(scalars(trainer.callback_metrics))

    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "best_model_score", None) is not None:
        metrics[f"best/{cb.monitor}"] = float(cb.best_model_score)
    metrics["trainer/global_step"] = float(trainer.global_step)  # for run.json and reports
    final = {f"hp/{k}": v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/"))}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # HParams tab: final metrics beside config
            if cfg.get("train"):
                logger.log_metrics(final, step=trainer.global_step)
            else:
                logger.log_hyperparams(flat_hparams(cfg), metrics=final)
        elif not cfg.get("train"):
            logger.log_hyperparams(flat_hparams(cfg))
        logger.save()
    report(cfg, trainer, metrics)
    return metrics


def make_loggers(cfg: DictConfig, purge_step: int | None = None) -> list[Any]:
    """The configured loggers; on a resume TensorBoard writes into the same folder with
    `purge_step` (events after the checkpoint are dropped: no gap, no duplicated step)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        extra = {}
        if purge_step is not None and node._target_.endswith("TensorBoardLogger"):
            extra["purge_step"] = purge_step
        logger = instantiate(node, **extra)
        if purge_step is not None and isinstance(logger, CSVLogger):
            keep_csv_rows(logger, purge_step)
        loggers.append(logger)
    return loggers


def expected_final_metrics(cfg: DictConfig) -> list[str]:
    """`hp/...` names the run will report, declared with the hyperparameters at the start (the
    HParams tab takes its metric columns from the first declaration)."""
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    if not monitor or "/" not in str(monitor):
        return []
    name = str(monitor).split("/", 1)[1]
    names = {f"hp/val/{name}", "hp/val/loss", f"hp/best/{monitor}"}
    if cfg.get("test"):
        names |= {f"hp/test/{name}", "hp/test/loss"}
    return sorted(names)


def log_hparams_at_start(cfg: DictConfig, trainer: pl.Trainer, resuming: bool = False) -> None:
    """Hyperparameters before training, so a crashed run has them (hparams.yaml, HParams tab);
    the final metrics follow at the end as `hp/...` scalars (NaN until then)."""
    params = flat_hparams(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and not resuming:
            logger.log_hyperparams(params, metrics={k: float("nan")
                                                    for k in expected_final_metrics(cfg)})
        else:
            logger.log_hyperparams(params)
        logger.save()


def fit(cfg: DictConfig, trainer: pl.Trainer, model: pl.LightningModule,
        datamodule: pl.LightningDataModule, ckpt_path: str | None) -> None:
    """trainer.fit; on SIGTERM (pre-emption) Lightning finishes the batch, the last-checkpoint
    callback saves `last.ckpt` (save_on_exception) and we say how to go on."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        saved = f"saved {last}" if last.is_file() else "no checkpoint saved"
        print(f"\ninterrupted by SIGTERM at step {trainer.global_step}: {saved}; run the same "
              "command again to resume (resume=auto)", flush=True)
        raise


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
                         + ("" if cb.monitor else " (a run in this directory continues "
                                                  "from it: resume=auto)"))
    if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        lines.append(f"inspect: tensorboard --logdir {out.parent}")
    print("\n".join(lines), flush=True)
