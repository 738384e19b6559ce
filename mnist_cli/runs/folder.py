"""The run folder: what a train run writes, where, and how later commands find it.

<run>/
  .hydra/config.yaml, overrides.yaml   (written by Hydra)
  train.log  model.txt  metrics.jsonl  metrics.csv  summary.json  loggers.json
  dataset_files.csv                    (dataset=folder: its files, split and skipped ones)
  checkpoints/last.pt  checkpoints/best.pt
  eval/<split>.json (mnist eval)  calibration.json (mnist eval calibrate=true)  tb/ (TensorBoard)
  .lock                                (held by the process that writes the run: locks.py)
<outputs_dir>/train/latest -> the newest run

RunFolder is the one place these names are spelled. How the files are written is atomic.py's
concern, who may write them locks.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from omegaconf import OmegaConf

from mnist_cli.errors import UserError

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one train run's folder (nothing is read or created by making one)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is welcome

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        """checkpoints/last.pt: where the run stands, rewritten every epoch (resume continues from it)."""
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        """checkpoints/best.pt: the epoch with the best validation accuracy (eval's default)."""
        return self.checkpoints / BEST

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / METRICS

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def dataset_files(self) -> Path:
        """dataset_files.csv: an image folder run's files, each with its split and size, and why it was skipped."""
        return self.path / "dataset_files.csv"

    @property
    def model_table(self) -> Path:
        """model.txt: the layer table printed at the start."""
        return self.path / "model.txt"

    @property
    def train_log(self) -> Path:
        """train.log: Hydra's log of the job (named for the task, `train`)."""
        return self.path / "train.log"

    @property
    def loggers(self) -> Path:
        """loggers.json: {"mlflow": {"tracking_uri", "run_id"}}, so a resumed run logs to the same MLflow run."""
        return self.path / "loggers.json"

    @property
    def tb(self) -> Path:
        """tb/: TensorBoard's event files."""
        return self.path / "tb"

    @property
    def eval(self) -> Path:
        """eval/: `mnist eval`'s report per split (<split>.json) and its pictures."""
        return self.path / "eval"

    @property
    def calibration(self) -> Path:
        """calibration.json: the temperature `mnist eval calibrate=true` fitted on the validation split, which
        eval, predict, serve and export then divide the logits by."""
        return self.path / "calibration.json"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    @property
    def hydra(self) -> Path:
        """.hydra/: what Hydra wrote when the run started."""
        return self.path / ".hydra"

    @property
    def hydra_config(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def hydra_overrides(self) -> Path:
        return self.hydra / "overrides.yaml"

    @property
    def own_files(self) -> Tuple[Path, ...]:
        """The files of the run itself (an export next to them never replaces one)."""
        return (
            self.summary,
            self.metrics_jsonl,
            self.metrics_csv,
            self.train_log,
            self.model_table,
            self.loggers,
            self.lock,
        )

    @property
    def own_folders(self) -> Tuple[Path, ...]:
        """The folders of the run itself: everything in them is the run's."""
        return (self.hydra, self.checkpoints, self.eval, self.tb)

    def owns(self, path: Path) -> bool:
        """Whether `path` (inside this folder) is one of own_files or lies in one of own_folders."""
        return path in self.own_files or any(path == f or f in path.parents for f in self.own_folders)

    def is_run(self) -> bool:
        """Whether this folder looks like a train run: checkpoints/ and Hydra's .hydra/ or a summary.json."""
        return self.checkpoints.is_dir() and (self.hydra.is_dir() or self.summary.is_file())


def latest_link(outputs_dir) -> Path:
    """<outputs_dir>/train/latest: the link to the newest train run."""
    return Path(outputs_dir) / "train" / "latest"


def hydra_overrides(run: RunFolder) -> List[str]:
    """The command-line overrides Hydra recorded when the run started; [] when missing or unreadable."""
    try:
        return [str(o) for o in OmegaConf.load(run.hydra_overrides)]
    except Exception:  # missing or unreadable: the summary just lists none
        return []


def point_latest(link: Path, run_dir: Path) -> Optional[str]:
    """Make `link` a relative symlink to run_dir, replacing any previous link atomically; returns a
    sentence (and leaves it alone) when `link` is a real file or folder, which is the user's."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists() and not link.is_symlink():
        return f"{link} is not a link made by mnist (a real file or folder): left as it is, so `latest` does not find this run."
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run_dir.resolve(), link.parent.resolve()), tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return None


def resolve_checkpoint(value: str, outputs_dir: str, key: str, prefer=(BEST, LAST)) -> Path:
    """`latest`, a run folder (its first checkpoint in `prefer`) or a checkpoint file -> a path.

    `key` names the option in messages (run=, resume=).
    """
    if not str(value).strip():
        raise UserError(f"{key}= is empty; give a run folder, a .pt checkpoint or latest.")
    if value == "latest":
        link = latest_link(outputs_dir)
        if not link.exists():
            raise UserError(
                f"{key}=latest found no train run under {link.parent}; train one first or give {key}=<folder>."
            )
        path = link.resolve()
    else:
        path = Path(value).expanduser()
        if not path.exists():
            raise UserError(f"{key}={value} does not exist; give a run folder, a .pt checkpoint or latest.")
    if path.is_dir():
        for name in prefer:
            if (RunFolder(path).checkpoints / name).is_file():
                return RunFolder(path).checkpoints / name
        if RunFolder(path).model_table.is_file():  # a train run that started and stopped before its first checkpoint
            raise UserError(
                f"{path} has no checkpoint yet: the run stopped before its first epoch ended; "
                f"continue it with mnist train resume={path}."
            )
        raise UserError(f"{path} holds no {CHECKPOINTS}/{' or '.join(prefer)}; is it a train run folder?")
    return path


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.pt), else the checkpoint's folder."""
    parent = Path(checkpoint_path).resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else parent
