"""The whole training path: config -> data, model, callbacks, loggers, trainer -> fit -> test."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from hw2.config import CONF_DIR
from hw2.runs import tracking
from hw2.runs.checkpoints import (
    check_resume_data,
    check_task,
    load_for_data,
    read_checkpoint,
    resume_hparams,
    task_of,
)
from hw2.runs.layout import last_checkpoint, monitored_best
from hw2.runs.lock import run_dir_lock
from hw2.runs.provenance import provenance
from hw2.runs.record import RunRecord, job_overrides, read_record, recorded_run
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


def logged_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The seed and the data/model/trainer groups as nested plain data (targets, private keys,
    Lightning plugins and paths left out). The loggers flatten and sanitise it themselves:
    `data/batch_size` columns in TensorBoard's HParams view (a null shown as "None", so a key
    swept between null and a value keeps its column) and the nesting of the config in
    hparams.yaml."""

    def keep(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: keep(v) for k, v in node.items() if not str(k).startswith("_")}
        if isinstance(node, list):
            return [keep(v) for v in node]
        return node

    out: dict[str, Any] = {"seed": cfg.get("seed")}
    for group in ("data", "model", "trainer"):
        node = OmegaConf.to_container(cfg.get(group), resolve=True) if cfg.get(group) else {}
        out[group] = {k: keep(v) for k, v in node.items()
                      if k not in ("plugins", "default_root_dir") and not str(k).startswith("_")}
    return out


def describe(cfg: DictConfig) -> str:
    """One screen of the composed config: the chosen groups, then model and data keys."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        picked = " ".join(f"{k}={v}" for k, v in choices.items()
                          if v is not None and not k.startswith("hydra") and _exists(k, v))
    except ValueError:
        picked = ""
    keys = {g: {k: v for k, v in OmegaConf.to_container(cfg[g]).items() if k != "_target_"}
            for g in ("model", "data") if g in cfg}
    return f"{picked}\n{OmegaConf.to_yaml(keys)}"


def _exists(group: str, option: str) -> bool:
    """An optional default with no file for this task (experiment=cnn_first_run) is no choice."""
    return not (CONF_DIR / group).is_dir() or (CONF_DIR / group / f"{option}.yaml").is_file()


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}


def run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics. `extra_callbacks`
    join the configured ones (benchmarks, notebooks). Sweep logic (skipping finished jobs, a
    GPU per job) lives in `hw2.sweeps.job.run_job`, which calls this. The run holds its
    directory's lock (`hw2.runs.lock`): another live process training into it is an error."""
    record: RunRecord | None = None
    try:
        with run_dir_lock(cfg.paths.output_dir), recorded_run(cfg.paths.output_dir) as record:
            with open_dict(cfg):  # resume=auto and Lightning's names -> the file it starts from
                cfg.ckpt_path = resolve_checkpoint(cfg)
            # gpu: what this job was given (local_gpus, Ray, SLURM all set CUDA_VISIBLE_DEVICES)
            accelerator = str(cfg.trainer.get("accelerator", "auto"))
            record.update(overrides=job_overrides(), resumed_from=cfg.ckpt_path,
                          device=accelerator, gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
            if record.writer:  # the code and libraries that ran (git.diff if the tree is dirty)
                record.update(**provenance(cfg.paths.output_dir, accelerator, record.previous))
            return _run(cfg, extra_callbacks, record)
    finally:
        if record is not None and record.writer:
            finish_trackers(cfg.paths.output_dir)


def finish_trackers(run_dir: str) -> None:
    """The run's files and end status to its MLflow run, once run.json holds the end. A tracker
    that cannot be reached costs a warning, not the run's result."""
    record = read_record(run_dir) or {}
    try:
        tracking.finish_mlflow_run(run_dir, record)
    except Exception as e:  # noqa: BLE001 - the run itself is recorded on disk either way
        log.warning("could not finish the MLflow run %s: %s", record.get("mlflow_run_id"), e)


def _run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback], record: RunRecord
         ) -> dict[str, float]:
    """The final metrics, recorded in `record` with how the run ended."""
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
    pretrained = start_from(cfg, datamodule) if cfg.get("train") else None
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
        if pretrained is not None and ckpt_path is None:  # a resume restores its own weights
            new = model.load_pretrained(pretrained["state_dict"],  # type: ignore[operator]
                                        pretrained["hyper_parameters"]["vocab"])
            log.info("init_from=%s: weights loaded%s", cfg.init_from,
                     f"; new rows for {''.join(new)!r}" if new else "")
    elif ckpt_path is None:
        raise ValueError("train=false needs ckpt_path=<checkpoint> to test")
    else:  # test-only: the checkpoint's own network, checked against the data
        model = load_for_data(ckpt_path, cfg.model._target_, datamodule)
    # for reports: the count the weight histograms would give, without reading the events
    record.update(params=sum(p.numel() for p in model.parameters()))
    callbacks = instantiate_group(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = make_loggers(cfg, purge_step=logging_step(ckpt_path) if cfg.get("train") else None,
                           record=record)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )

    metrics: dict[str, float] = {}
    pruned = False
    if cfg.get("train"):
        log_hparams_at_start(cfg, trainer, resuming=ckpt_path is not None)
        fit(cfg, trainer, model, datamodule, ckpt_path)
        metrics.update(fit_metrics(trainer, record.previous if ckpt_path is not None else None))
        record.update(metrics=metrics)  # a kill during the test: the next attempt keeps them
        pruned = any(getattr(cb, "pruned", False) for cb in trainer.callbacks)
    if cfg.get("test") and not pruned:  # a pruned trial's test would only hold its slot
        test_ckpt = tested_checkpoint(trainer) if cfg.get("train") else None
        # test-only: load_for_data loaded the weights
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
                logger.log_hyperparams(logged_hparams(cfg), metrics=final)
        elif not cfg.get("train"):
            log_params(logger, logged_hparams(cfg))
        logger.save()
    # the run is done: recorded before the report and its sample are printed, so a kill while
    # they print leaves a finished run (a re-run skips it), not one to resume and run again.
    # pruned: stopped by Optuna's pruner (hw2.callbacks.pruning), a normal end
    record.update(metrics=metrics)
    record.end("pruned" if pruned else "finished")
    report(cfg, trainer, metrics, record.data)
    return metrics


def fit_metrics(trainer: pl.Trainer, previous: Mapping[str, Any] | None) -> dict[str, float]:
    """The last value of every metric of the fit. A resumed attempt logs only what it ran: one
    resumed from the fit's end checkpoint (its predecessor was killed during the test) logs no
    train or val metric at all. The earlier attempt's recorded fit metrics fill those gaps;
    its test and best-checkpoint values are not carried over (this attempt makes its own)."""
    earlier = {k: float(v) for k, v in ((previous or {}).get("metrics") or {}).items()
               if not k.startswith(("test/", "best/", "trainer/")) and isinstance(v, int | float)}
    return {**earlier, **scalars(trainer.callback_metrics)}


def start_from(cfg: DictConfig, datamodule: pl.LightningDataModule) -> dict[str, Any] | None:
    """`init_from=<ckpt>` (fine-tuning): the checkpoint, after fixing what the model is built
    from: the checkpoint's vocabulary (extended by the data) and its network architecture."""
    path = cfg.get("init_from")
    if not path:
        return None
    cls = get_class(cfg.model._target_)
    if not hasattr(cls, "load_pretrained"):
        raise ValueError(f"init_from={path}: fine-tuning from a checkpoint is offered for "
                         "task=charlm only")
    state = read_checkpoint(path)
    hparams = state.get("hyper_parameters", {})
    check_task(path, hparams, cls)
    datamodule.start_vocab_from(hparams["vocab"])  # type: ignore[attr-defined]
    with open_dict(cfg):
        cfg.model.net = cls.pretrained_net(cfg.model.net, hparams)
    return state


def tested_checkpoint(trainer: pl.Trainer) -> str | None:
    """After a fit, the checkpoint to test: the best one (`monitored_best`), else None (the
    last weights, in memory). Testing the last weights is said at info level when the config
    asks for it (no validation data, or no checkpoint ranked by a metric: callbacks=none), and
    as a warning when the run validated yet kept no best checkpoint (it stopped before its
    first validation, or never had finite weights to save)."""
    best = monitored_best(trainer.checkpoint_callbacks)
    if best is not None:
        return str(best.path)
    if not any(cb.monitor for cb in trainer.checkpoint_callbacks):
        log.info("no checkpoint ranked by a metric (callbacks=none or no model_checkpoint): "
                 "testing the last weights")
    elif not sum(trainer.num_val_batches):
        log.info("no validation data: testing the last weights")
    else:
        log.warning("no best checkpoint although the run has validation data (it ended before "
                    "its first validation, or its weights were never finite): testing the last "
                    "weights")
    return None


def make_loggers(cfg: DictConfig, purge_step: int | None = None,
                 record: RunRecord | None = None) -> list[Any]:
    """The configured loggers; on a resume TensorBoard writes into the same folder with
    `purge_step` (events after the checkpoint are dropped: no gap, no duplicated step), and
    MLflow and W&B continue the run whose id the run's record keeps (`hw2.runs.tracking`)."""
    previous = record.previous if record is not None else {}
    run_dir = Path(cfg.paths.output_dir)
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        extra: dict[str, Any] = {}
        if purge_step is not None and node._target_.endswith("TensorBoardLogger"):
            extra["purge_step"] = purge_step
        if tracking.is_mlflow(node):
            extra.update(tracking.mlflow_logger_kwargs(node, run_dir, previous))
        if tracking.is_wandb(node):
            extra.update(tracking.wandb_logger_kwargs(node, run_dir, previous))
        logger = instantiate(node, **extra)
        if purge_step is not None and isinstance(logger, CSVLogger):
            keep_csv_rows(logger, purge_step)
        if record is not None and record.writer and isinstance(logger, MLFlowLogger):
            record.update(**tracking.started_mlflow_run(logger, extra["tracking_uri"],
                                                        resumed="run_id" in extra))
        if record is not None and record.writer and isinstance(logger, WandbLogger):
            record.update(wandb_run_id=extra["id"], wandb_dir=str(run_dir / "wandb"))
        loggers.append(logger)
    return loggers


def log_params(logger: Any, params: dict[str, Any]) -> None:
    """Hyperparameters to one logger; to a continued MLflow run only those it lacks (MLflow
    refuses to change a logged parameter)."""
    if isinstance(logger, MLFlowLogger):
        params = tracking.new_params(logger, params)
        if not params:
            return
    logger.log_hyperparams(params)


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
    params = logged_hparams(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and not resuming:
            logger.log_hyperparams(params, metrics={k: float("nan")
                                                    for k in expected_final_metrics(cfg)})
        else:
            log_params(logger, params)
        logger.save()


def fit(cfg: DictConfig, trainer: pl.Trainer, model: pl.LightningModule,
        datamodule: pl.LightningDataModule, ckpt_path: str | None) -> None:
    """trainer.fit; on SIGTERM (pre-emption) Lightning finishes the batch, the last-checkpoint
    callback saves `last.ckpt` (save_on_exception) and we say how to go on."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        last = last_checkpoint(cfg.paths.output_dir)
        saved = f"saved {last}" if last.is_file() else "no checkpoint saved"
        print(f"\ninterrupted by SIGTERM at step {trainer.global_step}: {saved}; run the same "
              "command again to resume (resume=auto)", flush=True)
        raise


def report(cfg: DictConfig, trainer: pl.Trainer, metrics: Mapping[str, float],
           record: Mapping[str, Any] | None = None) -> None:
    """Where the run went and how it ended, printed last so a user sees it."""
    if not trainer.is_global_zero:
        return
    lines = ["", "final metrics:"]
    lines += [f"  {k:<20} {v:.4f}" for k, v in sorted(metrics.items())
              if k.startswith(("train/", "val/", "test/", "best/"))]
    out = Path(cfg.paths.output_dir)
    lines.append(f"run directory: {out}")
    best = monitored_best(trainer.checkpoint_callbacks)
    if best is not None:
        lines.append(f"best by {best.monitor} checkpoint: {best.path}")
    for cb in trainer.checkpoint_callbacks:
        if not cb.monitor and cb.best_model_path:  # a callback without a metric keeps the latest
            lines.append(f"last checkpoint: {cb.best_model_path} (a run in this directory "
                         "continues from it: resume=auto)")
    if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        lines.append(f"inspect: tensorboard --logdir {out.parent}")
    lines += tracking.where_to_look(dict(record or {}))
    print("\n".join(lines), flush=True)
    sample = cfg.get("sample_at_end")
    if sample and best is not None and task_of(trainer.lightning_module.hparams) == "CharLM":
        print(sample_report(best.path, **sample), flush=True)


def sample_report(ckpt: Path, prime: str = "ROMEO", length: int = 250, temperature: float = 0.8,
                  seed: int | None = 0) -> str:
    """A sample of `ckpt` (what the model learned, read at a glance) and the command that
    generates more from it."""
    from hw2.inference import generate  # here: a run that samples nothing never imports it

    try:
        text = generate(ckpt, prime=str(prime), length=int(length),
                        temperature=float(temperature), seed=seed)
    except ValueError as e:  # a prime outside the vocabulary: the run still ends well
        return f"\nno sample (sample_at_end): {e}"
    seed_arg = "null" if seed is None else seed
    command = (f"python generate.py ckpt={shlex.quote(str(ckpt))} prime={shlex.quote(str(prime))}"
               f" length=500 temperature={temperature} seed={seed_arg}")
    return (f"\nsample of the best checkpoint (prime {prime!r}, temperature {temperature}, "
            f"seed {seed_arg}):\n{text}\n\nmore: {command}")
