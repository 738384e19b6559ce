"""Where runs are watched besides their own files: TensorBoard event files and MLflow runs.

`logger=csv` (the default) is metrics.jsonl / metrics.csv, which metrics.py always writes; the
loggers here add to them (`logger=[tensorboard,mlflow]`). A logger that fails (server down, disk
full) prints one warning and is switched off: training goes on. Under torchrun only rank 0 logs.

Each point appears once, even when a run is killed and resumed:
- TensorBoard (<run>/tb/) has every scalar at the global step (batches trained so far) and writes an
  epoch before its checkpoint: a resumed run hides what followed its checkpoint (purge_step).
- MLflow cannot hide a point, so an epoch goes to MLflow after its checkpoint, and a resumed run
  sends the epochs the killed process did not. One MLflow run per run folder: its id is kept in
  <run>/loggers.json, so a resumed run and a later `mnist eval` add to the same MLflow run.
Each logger's package is imported only when it is chosen.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from mnist_cli.errors import first_line
from mnist_cli.paths import sqlite_file
from mnist_cli.runs.atomic import write_json
from mnist_cli.runs.folder import RunFolder
from mnist_cli.runs.locks import exclusive

EPOCH_SCALARS = {
    "train/loss": "train_loss",
    "train/accuracy": "train_accuracy",
    "val/loss": "val_loss",
    "val/accuracy": "val_accuracy",
    "lr": "lr",
    "epoch": "epoch",
    "seconds": "seconds",
    "val/trained_accuracy": "trained_val_accuracy",
    "val/ema_accuracy": "ema_val_accuracy",
}
# (the last two only with ema_decay: the trained weights and their average, val/accuracy the better)
MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}


def flat(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested config as {"optimizer.lr": 0.001, ...}; lists as text."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def summary_metrics(summary: Dict[str, Any]) -> Dict[str, float]:
    """The summary metrics a sweep optimises and a report ranks by, by column (best_val_accuracy, ...)."""
    from mnist_cli.runs.metrics import SUMMARY_METRICS, summary_value

    values = {metric.column: summary_value(summary, name) for name, metric in SUMMARY_METRICS.items()}
    return {column: float(value) for column, value in values.items() if value is not None}


def read_state(run_dir: Path) -> Dict[str, Any]:
    """loggers.json of a run folder ({} when there is none, or it is damaged)."""
    try:
        state = json.loads(RunFolder(run_dir).loggers.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def known_mlflow_run(run_dir: Path) -> Optional[Dict[str, str]]:
    """The MLflow run loggers.json names ({"tracking_uri", "run_id", ...}), or None: no file, or
    one that does not name a run (a warning says so: the run's MLflow history cannot be found)."""
    path = RunFolder(run_dir).loggers
    if not path.exists():
        return None
    known = read_state(run_dir).get("mlflow")
    if isinstance(known, dict) and all(isinstance(known.get(k), str) for k in ("tracking_uri", "run_id")):
        database = sqlite_file(known["tracking_uri"])
        if database is None or database.exists():
            return known
        why = f"its MLflow store {database} is gone"
    else:
        why = f"{path} does not name an MLflow run"
    print(f"warning: {why}; this run's earlier MLflow history cannot be added to.", file=sys.stderr)
    return None


def git_commit(cwd: Optional[str] = None) -> Optional[str]:
    """The commit checked out where the command runs, or None (no git, not a repository)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def default_experiment(dataset: str, sweep: Optional[str]) -> str:
    """The MLflow experiment of a run: its dataset's name; a sweep's jobs share `<dataset> sweep <folder>`."""
    return f"{dataset} sweep {sweep}" if sweep else dataset


def default_tracking_uri(outputs_dir: str) -> str:
    """`sqlite:///<outputs_dir>/mlflow.db`: MLflow's database backend, in a file, offline."""
    return f"sqlite:///{Path(outputs_dir).resolve() / 'mlflow.db'}"


def write_hparams(writer, params: Dict[str, Any], scores: Dict[str, float]) -> None:
    """Write the HParams tab's records into `writer`'s own event file. SummaryWriter.add_hparams would
    make a new timestamped folder with its own scalars; its file writer (SummaryWriter._get_file_writer(),
    private in torch.utils.tensorboard) takes the records as they are. The one reach into TensorBoard's
    internals: tests/training/test_loggers.py names it when an upgrade changes it."""
    from torch.utils.tensorboard.summary import hparams

    for part in hparams(params, scores):
        writer._get_file_writer().add_summary(part)


class TensorBoardLogger:
    """Event files in <run>/tb: epoch scalars, the training loss every N steps, hparams at the end."""

    def __init__(self, settings, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.every = settings.log_every_n_steps
        tb = RunFolder(run_dir).tb
        resumed = tb.is_dir()  # hide what the last process wrote after its checkpoint
        self.writer = SummaryWriter(str(tb), purge_step=start_step + 1 if resumed else None)

    def step(self, global_step: int, loss: float) -> None:
        self.writer.add_scalar("train/step_loss", loss, global_step)

    def epoch_saved(self, row: Dict[str, Any], global_step: int) -> None:
        pass

    def epoch_ended(self, row: Dict[str, Any], global_step: int) -> None:
        for tag, column in EPOCH_SCALARS.items():
            if row.get(column) is not None:
                self.writer.add_scalar(tag, row[column], global_step)
        self.writer.flush()

    def finish(self, summary: Dict[str, Any], config: Dict[str, Any], global_step: int) -> None:
        """The run's hyperparameters beside its final numbers (TensorBoard's HParams tab)."""
        params = {k: ("null" if v is None else v) for k, v in flat(config).items()}
        scores = {f"hparam/{k}": v for k, v in summary_metrics(summary).items()}
        write_hparams(self.writer, params, scores)
        for tag, value in scores.items():
            self.writer.add_scalar(tag, value, global_step)
        self.close()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run per run folder: params, per-epoch metrics (step = epoch), tags, artifacts."""

    def __init__(self, settings, run_dir: Path, config: Dict[str, Any], logged_epochs: List[Dict]):
        self.run_dir = run_dir
        known = known_mlflow_run(run_dir) or {}
        self.tracking_uri = (
            known.get("tracking_uri") or settings.tracking_uri or default_tracking_uri(config["outputs_dir"])
        )
        self.client = _mlflow_client(self.tracking_uri)
        self.run_id = known.get("run_id")
        seen = set()
        if self.run_id is None:  # a new run, or a resumed one whose MLflow run is lost: it gets every epoch so far
            self.run_id = self._new_run(settings, config)
        else:  # a resumed run: the same MLflow run, running again, with the epochs the last process missed
            self.client.update_run(self.run_id, status="RUNNING")
            seen = {m.step for m in self.client.get_metric_history(self.run_id, "val_accuracy")}
            seen |= {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
        for row in logged_epochs:
            if row["epoch"] not in seen:
                self.epoch_saved(row, 0)

    def _new_run(self, settings, config: Dict[str, Any]) -> str:
        from mlflow.entities import Param

        name = settings.experiment or default_experiment(config["dataset"]["name"], None)
        with exclusive(_lock_of(self.tracking_uri)):  # sweep jobs starting together: one experiment
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                artifacts = (Path(config["outputs_dir"]).resolve() / "mlartifacts").as_uri()
                experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
            else:
                experiment_id = experiment.experiment_id
        tags = {
            "run_folder": str(self.run_dir),
            "status": "running",
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": "mnist train",
        }
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(experiment_id, tags=tags, run_name=self.run_dir.name)
        params = [Param(k, str(v)[:6000]) for k, v in sorted(flat(config).items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        state = read_state(self.run_dir)
        state["mlflow"] = {"tracking_uri": self.tracking_uri, "run_id": run.info.run_id, "experiment": name}
        write_json(RunFolder(self.run_dir).loggers, state)
        return run.info.run_id

    def step(self, global_step: int, loss: float) -> None:
        pass  # MLflow gets per-epoch numbers; per-step loss is TensorBoard's

    def epoch_ended(self, row: Dict[str, Any], global_step: int) -> None:
        pass

    def epoch_saved(self, row: Dict[str, Any], global_step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [
            Metric(key, float(row[key]), now, row["epoch"])
            for key in EPOCH_SCALARS.values()
            if key != "epoch" and row.get(key) is not None
        ]
        self.client.log_batch(self.run_id, metrics=values)

    def finish(self, summary: Dict[str, Any], config: Dict[str, Any], global_step: int) -> None:
        from mlflow.entities import Metric, RunTag

        now, step = int(time.time() * 1000), int(summary.get("epochs_completed") or 0)
        numbers = [Metric(k, v, now, step) for k, v in summary_metrics(summary).items()]  # a resumed run: the next step
        self.client.log_batch(self.run_id, metrics=numbers, tags=[RunTag("status", summary["status"])])
        if summary["status"] != "interrupted":  # the files once, when the run is over (not at every Ctrl-C)
            run = RunFolder(self.run_dir)
            for path, folder in ((run.summary, None), (run.hydra_config, None), (run.best, run.checkpoints.name)):
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path), folder)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(summary["status"], "FAILED"))

    def close(self) -> None:
        """Dropped after a failure: mark the MLflow run failed if the store still answers."""
        self.client.set_terminated(self.run_id, "FAILED")


def _lock_of(tracking_uri: str) -> Optional[Path]:
    """A lock file beside a SQLite tracking database (its first use creates the tables), else None."""
    database = sqlite_file(tracking_uri)
    return None if database is None else database.with_name(database.name + ".lock")


def _mlflow_client(tracking_uri: str):
    """An MlflowClient for `tracking_uri`, quiet, and quick to give up on a server that is down."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # MLflow's default retries for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow"):  # after the import, which sets mlflow's own level; its errors reach
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the user as our one-line warning instead

    with exclusive(_lock_of(tracking_uri)):  # the first client of a new database migrates it
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # connects now: a bad URI fails here, not mid-training
    return client


@dataclass
class Loggers:
    """The chosen loggers, each called in turn; one that raises is reported once and dropped."""

    active: Dict[str, Any] = field(default_factory=dict)  # name -> logger

    def call(self, method: str, *args) -> None:
        for name, logger in list(self.active.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as error:
                self.drop(name, error)

    def wants_step(self, global_step: int) -> bool:
        """Whether any logger records the training loss at this step."""
        return any(getattr(logger, "every", 0) and global_step % logger.every == 0 for logger in self.active.values())

    def drop(self, name: str, error: BaseException) -> None:
        logger = self.active.pop(name, None)
        try:
            if logger is not None:
                logger.close()
        except Exception:
            pass
        print(
            f"warning: the {name} logger failed ({_first_line(error)}); training goes on without it.", file=sys.stderr
        )


def _first_line(error: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` of the innermost cause (a full disk under SQLAlchemy under
    MLflow), cut at `limit` characters (a server's error can be a page long)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    line = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def start_loggers(settings, run_dir: Path, config: Dict[str, Any], history: List[Dict], start_step: int) -> Loggers:
    """The loggers `settings` (cfg.logger) chooses, started for `run_dir`; a resumed run (`history`
    its epochs so far, `start_step` its checkpoint's global step) continues where its checkpoint is."""
    loggers = Loggers()
    makers = {
        "tensorboard": lambda s: TensorBoardLogger(s, run_dir, start_step),
        "mlflow": lambda s: MLflowLogger(s, run_dir, config, history),
    }
    for name, make in makers.items():
        chosen = settings.get(name) if settings is not None else None
        if chosen is None:
            continue
        try:
            loggers.active[name] = make(chosen)
        except ImportError:
            print(
                f"warning: logger={name} needs its extra: pip install 'mnist-cli[{name}]'; training goes on without it.",
                file=sys.stderr,
            )
        except Exception as error:
            loggers.drop(name, error)
    return loggers


def log_evaluation(run_dir: Path, settings, report: Dict[str, Any], pictures: Dict[str, Path]) -> None:
    """Add `mnist eval`'s numbers and pictures to the run's loggers (TensorBoard images, MLflow
    metrics and artifacts); a logger that fails is one warning, the evaluation stands."""
    if settings is None:
        return
    split, epoch = report["split"], report["epoch"]
    numbers = {f"{split}_{key}": report[key] for key in ("accuracy", "loss", "macro_f1")}
    if settings.get("tensorboard") is not None:
        try:
            _tensorboard_evaluation(run_dir, split, numbers, pictures, epoch)
        except Exception as error:
            _evaluation_not_logged("tensorboard", error)
    mlflow = known_mlflow_run(run_dir) if settings.get("mlflow") is not None else None
    if mlflow:
        try:
            _mlflow_evaluation(mlflow, run_dir, split, numbers, pictures, epoch)
        except Exception as error:
            _evaluation_not_logged("mlflow", error)


def _evaluation_not_logged(name: str, error: BaseException) -> None:
    print(
        f"warning: the {name} logger failed ({_first_line(error)}); the evaluation is saved all the same.",
        file=sys.stderr,
    )


def _mlflow_evaluation(
    mlflow: Dict[str, str], run_dir: Path, split: str, numbers: Dict[str, float], pictures: Dict[str, Path], epoch: int
) -> None:
    from mlflow.entities import Metric

    client = _mlflow_client(mlflow["tracking_uri"])
    now = int(time.time() * 1000)
    client.log_batch(mlflow["run_id"], metrics=[Metric(f"eval/{k}", float(v), now, epoch) for k, v in numbers.items()])
    eval_dir = RunFolder(run_dir).eval
    for path in [*pictures.values(), eval_dir / f"{split}.json"]:
        client.log_artifact(mlflow["run_id"], str(path), eval_dir.name)


def _tensorboard_evaluation(
    run_dir: Path, split: str, numbers: Dict[str, float], pictures: Dict[str, Path], epoch: int
) -> None:
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(RunFolder(run_dir).tb / "eval")) as writer:
        for name, value in numbers.items():
            writer.add_scalar(f"eval/{name}", value, epoch)
        for name, path in pictures.items():
            image = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image(f"eval/{split}_{name}", image, epoch, dataformats="HWC")
