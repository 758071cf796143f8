"""Experiment trackers beside TensorBoard: MLflow (`logger=mlflow`) and W&B (`logger=wandb`).

One run directory is one tracker run. Its id is kept in `run.json` (`mlflow_run_id`,
`wandb_run_id`), so a resumed, SIGTERM'd or requeued run logs into the same tracker run. A sweep
is an MLflow parent run (created once per sweep dir by `hw2.sweeps.hydra_callbacks.MlflowSweep`,
its id in `<sweep dir>/mlflow_parent.json`) with one nested child run per job.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hw2.utils.fileio import atomic_write_json

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for a nested run
# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) pages
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def is_mlflow(node: Any) -> bool:
    return isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("MLFlowLogger")


def is_wandb(node: Any) -> bool:
    return isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("WandbLogger")


def mlflow_node(logger_group: DictConfig | None) -> DictConfig | None:
    """The MLflow logger's config among the configured loggers, if any."""
    return next((n for n in (logger_group or {}).values() if is_mlflow(n)), None)


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def absolute_uri(uri: str) -> str:
    """`sqlite:///logs/mlflow.db` (relative to the working directory) as an absolute URI, so
    the printed `mlflow ui` command and sweep jobs started elsewhere find the same store; its
    folder is created."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix):])
        path = path if path.is_absolute() else Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path.resolve())
    return uri


def store_settings(node: DictConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment). The artifact location applies to
    a local store; a tracking server (http://...) keeps artifacts where it was told to."""
    uri = absolute_uri(str(node.tracking_uri))
    location = node.get("artifact_location")
    if location is None or not is_local(uri):
        return uri, None
    path = Path(str(location))
    path.mkdir(parents=True, exist_ok=True)
    return uri, path.resolve().as_uri()


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment_id(mlflow: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created when missing (two sweep jobs may race to create
    it: the loser reads the winner's)."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        return str(found.experiment_id)
    try:
        return str(mlflow.create_experiment(name, artifact_location=artifact_location))
    except Exception:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def mark_training_experiment(mlflow: Any, exp_id: str) -> None:
    """Tag the experiment as model training, so the UI opens on its runs and their metrics."""
    if KIND_TAG not in mlflow.get_experiment(exp_id).tags:
        mlflow.set_experiment_tag(exp_id, KIND_TAG, KIND)


def mlflow_logger_kwargs(node: DictConfig, run_dir: Path, previous: dict[str, Any]
                         ) -> dict[str, Any]:
    """Arguments for Lightning's MLFlowLogger beyond its config: the absolute store, the run of
    an earlier attempt of this run directory (same store) to continue, the sweep's parent run,
    and the run directory's name as the run name."""
    uri, location = store_settings(node)
    kwargs: dict[str, Any] = {"tracking_uri": uri, "artifact_location": location}
    if node.get("run_name") is None:
        kwargs["run_name"] = run_dir.name
    if previous.get("mlflow_run_id") and previous.get("mlflow_tracking_uri") == uri:
        kwargs["run_id"] = previous["mlflow_run_id"]
        return kwargs
    parent = sweep_parent(run_dir, uri)
    if parent is not None:
        tags = dict(OmegaConf.to_container(node.tags, resolve=True)) if node.get("tags") else {}
        kwargs["tags"] = {**tags, PARENT_TAG: parent}
    return kwargs


def sweep_parent(run_dir: Path, uri: str) -> str | None:
    """The sweep's parent run id for a job in `<sweep dir>/<n>`, when the sweep made one in
    the same store."""
    path = run_dir.parent / PARENT_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info.get("run_id") if info.get("tracking_uri") == uri else None


def started_mlflow_run(logger: Any, uri: str, resumed: bool) -> dict[str, Any]:
    """The ids to keep in run.json once the logger has its run; a continued run is marked
    running again (a killed or failed attempt left it KILLED or FAILED)."""
    run_id = logger.run_id  # creates the run (and the experiment) when new
    if resumed:
        logger.experiment.update_run(run_id, status="RUNNING")
    mark_training_experiment(logger.experiment, logger.experiment_id)
    return {"mlflow_run_id": run_id, "mlflow_tracking_uri": uri,
            "mlflow_experiment_id": logger.experiment_id}


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as the flat `group/key` names MLflow holds them under (the
    logger flattens with "/" as it logs)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def new_params(logger: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Of `params`, those a continued MLflow run does not hold yet. MLflow refuses to change a
    logged parameter: a value changed on resume (e.g. a longer trainer.max_epochs) is kept as
    the tag `resumed.<key>` instead."""
    run = logger.experiment.get_run(logger.run_id)
    held = run.data.params
    out = {}
    for key, value in flatten(params).items():
        text = str(value)[:250]  # what MLFlowLogger logs
        if key not in held:
            out[key] = value
        elif held[key] != text:
            log.warning("%s changed on resume (%s -> %s): MLflow keeps the first value; the new "
                        "one is the tag resumed.%s", key, held[key], text, key)
            logger.experiment.set_tag(logger.run_id, f"resumed.{key}", text)
    return out


def finish_mlflow_run(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """After a run: its composed config, run.json (and git.diff) as artifacts of its MLflow run,
    and the run's end status (FINISHED, FAILED, KILLED for interrupted)."""
    run_id, uri = record.get("mlflow_run_id"), record.get("mlflow_tracking_uri")
    if not run_id or not uri:
        return
    run_dir = Path(run_dir)
    mlflow = client(uri)
    for path, folder in ((run_dir / ".hydra" / "config.yaml", "hydra"),
                         (run_dir / ".hydra" / "overrides.yaml", "hydra"),
                         (run_dir / "run.json", None), (run_dir / "git.diff", None)):
        if path.is_file():
            mlflow.log_artifact(run_id, str(path), folder)
    mlflow.set_terminated(run_id, STATUS.get(str(record.get("status")), "FAILED"))


def ensure_sweep_parent(sweep_dir: Path, node: DictConfig, experiment_name: str,
                        title: str) -> str:
    """The parent run of the sweep in `sweep_dir`, named `title`: made once, then reused by
    re-runs of the sweep (its id in `<sweep dir>/mlflow_parent.json`) and marked running again."""
    uri, location = store_settings(node)
    path = sweep_dir / PARENT_FILE
    mlflow = client(uri)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if info.get("tracking_uri") == uri and info.get("run_id"):
        mlflow.update_run(info["run_id"], status="RUNNING")
        return str(info["run_id"])
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    exp = experiment_id(mlflow, experiment_name, location)
    mark_training_experiment(mlflow, exp)
    run = mlflow.create_run(exp, tags={MLFLOW_RUN_NAME: title,
                                       "hw2.sweep_dir": str(sweep_dir)})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"tracking_uri": uri, "experiment_id": exp,
                             "run_id": run.info.run_id})
    return str(run.info.run_id)


def finish_sweep_parent(sweep_dir: Path, all_finished: bool) -> str | None:
    """The sweep's report files as artifacts of its parent run, which ends FINISHED (or FAILED
    when a job did not finish). Returns the parent run id, None without one."""
    try:
        info = json.loads((sweep_dir / PARENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mlflow = client(info["tracking_uri"])
    for name in ("report.md", "report.html", "runs.csv", "runs.json"):
        if (sweep_dir / name).is_file():
            mlflow.log_artifact(info["run_id"], str(sweep_dir / name), "report")
    mlflow.set_terminated(info["run_id"], "FINISHED" if all_finished else "FAILED")
    return str(info["run_id"])


def where_to_look(record: dict[str, Any]) -> list[str]:
    """The lines that tell a user how to see the run in MLflow and W&B."""
    lines = []
    uri, run_id = record.get("mlflow_tracking_uri"), record.get("mlflow_run_id")
    if uri and run_id:
        if is_local(uri):
            lines.append(f"mlflow: mlflow ui --backend-store-uri {uri}  (run {run_id})")
        else:
            lines.append(f"mlflow: {uri.rstrip('/')}/#/experiments/"
                         f"{record.get('mlflow_experiment_id')}/runs/{run_id}")
    if record.get("wandb_run_id"):
        lines.append(f"wandb (offline): wandb sync {record.get('wandb_dir')}/offline-run-*-"
                     f"{record['wandb_run_id']}")
    return lines


def wandb_logger_kwargs(node: DictConfig, run_dir: Path, previous: dict[str, Any]
                        ) -> dict[str, Any]:
    """The W&B run id of this run directory (an earlier attempt's, else a new one) with
    resume="allow", so a resumed run continues the same W&B run; the run directory's name as
    the run name."""
    run_id = previous.get("wandb_run_id") or secrets.token_hex(4)  # W&B ids: [a-z0-9]
    kwargs: dict[str, Any] = {"id": run_id, "resume": "allow"}
    if node.get("name") is None:
        kwargs["name"] = run_dir.name
    return kwargs
