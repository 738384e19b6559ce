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

from mnist_cli.errors import UserError

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


def copy_atomically(source: Path, target: Path) -> None:
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))


def read_metrics(run_dir: Path) -> list:
    """The epochs recorded in metrics.jsonl (empty when there is none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _csv_rows(rows: list, header: bool) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def keep_metrics_until(run_dir: Path, epoch: int, last_row: Dict[str, Any]) -> None:
    """Rewrite metrics.jsonl/csv with epochs 1..epoch only (a kill can leave one more, or one fewer:
    the checkpoint's own row fills that gap), so a resumed run never duplicates an epoch."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= epoch]
    if epoch >= 1 and (not rows or rows[-1]["epoch"] < epoch) and last_row:
        rows.append(last_row)
    atomic_write(Path(run_dir) / "metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
    atomic_write(Path(run_dir) / "metrics.csv", lambda f: f.write(_csv_rows(rows, header=True).encode()))


def append_metrics(run_dir: Path, row: Dict[str, Any]) -> None:
    """Append one epoch to metrics.jsonl and metrics.csv (header written with the first row)."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = run_dir / "metrics.csv"
    header = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        f.write(_csv_rows([row], header))


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


def resolve_checkpoint(value: str, outputs_dir: str, key: str, prefer=("best.pt", "last.pt")) -> Path:
    """`latest`, a run folder (its first checkpoint in `prefer`) or a checkpoint file -> a path.

    `key` names the option in messages (run=, resume=).
    """
    if value == "latest":
        link = Path(outputs_dir) / "train" / "latest"
        if not link.exists():
            raise UserError(f"{key}=latest found no train run under {link.parent}; train one first or give {key}=<folder>.")
        path = link.resolve()
    else:
        path = Path(value).expanduser()
        if not path.exists():
            raise UserError(f"{key}={value} does not exist; give a run folder, a .pt checkpoint or latest.")
    if path.is_dir():
        for name in prefer:
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path} holds no checkpoints/{' or '.join(prefer)}; is it a train run folder?")
    return path


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.pt), else the checkpoint's folder."""
    parent = Path(checkpoint_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent
