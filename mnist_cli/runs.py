"""The run folder: what a train run writes and how later commands find and read it.

<run>/
  .hydra/config.yaml, overrides.yaml   (written by Hydra)
  train.log  model.txt  metrics.jsonl  metrics.csv  summary.json
  checkpoints/last.pt  checkpoints/best.pt
<outputs_dir>/train/latest -> the newest run

Everything a later command reads is written atomically: a temp file in the same folder, fsync,
rename. A crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

CHECKPOINT_FORMAT = "mnist-cli-checkpoint"
CHECKPOINT_VERSION = 1
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call write(file) on a temp file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def save_checkpoint(path: Path, checkpoint: Dict[str, Any]) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(checkpoint, f))


def append_metrics(run_dir: Path, row: Dict[str, Any]) -> None:
    """Append one epoch to metrics.jsonl and metrics.csv (header written with the first row)."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = run_dir / "metrics.csv"
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def point_latest(link: Path, run_dir: Path) -> None:
    """Make `link` a relative symlink to run_dir, replacing any previous one atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run_dir.resolve(), link.parent.resolve()), tmp)
    os.replace(tmp, link)


def discard_unstarted(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra wrote before the run failed to start."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.resolve() == Path.cwd().resolve():
        return
    entries = {p.name for p in run_dir.iterdir()}
    if not entries <= {".hydra", "train.log", "checkpoints"}:
        return
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        return
    shutil.rmtree(run_dir)
    try:
        run_dir.parent.rmdir()  # the date folder, if this was its only run
    except OSError:
        pass


def record_failure(run_dir: Path, error: str, overrides: list) -> None:
    """Mark a sweep job failed in its summary.json (keeping what a started run already wrote)."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    if summary.get("status") in (None, "completed"):
        summary["status"] = "failed"
    summary.update(error=error, overrides=overrides, run_dir=str(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, summary)
