"""The run folder: what a train run writes and how later commands find and read it.

<run>/
  .hydra/config.yaml, overrides.yaml   (written by Hydra)
  train.log  model.txt  metrics.jsonl  metrics.csv  summary.json
  checkpoints/last.pt  checkpoints/best.pt
  .lock                                (held by the process that writes the run)
<outputs_dir>/train/latest -> the newest run

Everything a later command reads is written atomically: a temp file in the same folder, fsync,
rename. A crash leaves the old file or the new one, never half of one. One process at a time
writes a run folder: it holds an exclusive lock on <run>/.lock, which the kernel frees when the
process ends, however it ends (kill -9 included).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from mnist_cli.errors import UserError, WriteFailed


def _os_error(error: Optional[BaseException]) -> Optional[OSError]:
    """The OSError behind `error`, if any: torch.save's zip writer meets a full disk as an OSError and
    raises a RuntimeError while closing ("unexpected pos ..."), with the OSError as its context."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def _temp_name(name: str) -> str:
    """`.<name>.<pid>.tmp`, with `name` shortened (and a hash of it kept) where that would pass NAME_MAX,
    so any valid file name can be written atomically."""
    tail = f".{os.getpid()}.tmp"
    raw = os.fsencode(name)
    if 1 + len(raw) + len(tail) > NAME_MAX:
        digest = hashlib.sha1(raw).hexdigest()[:8]
        kept = raw[: NAME_MAX - 1 - len(tail) - 9].decode("utf-8", "ignore")  # no character cut in half
        return f".{kept}~{digest}{tail}"  # lock_run's `.*.tmp` still finds it
    return f".{name}{tail}"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call write(file) on a temp file next to `path` (_temp_name: .<name>.<pid>.tmp; one a kill -9 leaves is
    removed by the next lock_run), fsync it, then rename it over `path`.

    An OSError (a full disk, no permission) raises WriteFailed naming the path; `path` keeps
    its previous content.
    """
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = _os_error(error)
        if cause is not None:
            kept = "its previous version is kept" if path.exists() else "nothing was written"
            reason = cause.strerror or str(cause)
            raise WriteFailed(f"could not write {path} ({reason}); {kept}.") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(data: Any, indent: Optional[int] = None) -> str:
    """`data` as strict JSON: an infinite or NaN number becomes null, never `Infinity`."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    """`data` as one indented strict-JSON document, written atomically."""
    atomic_write(path, lambda f: f.write((strict_json(data, indent=2) + "\n").encode()))


def write_jsonl(path: Path, rows: Iterable[Dict]) -> None:
    """One strict-JSON object per line, written atomically."""
    atomic_write(path, lambda f: f.write("".join(strict_json(row) + "\n" for row in rows).encode()))


def readable(text: str) -> str:
    """`text` with the bytes of a non-UTF-8 file name (Python's surrogate escapes) written as `\\xe9`:
    printable and encodable, and two such names stay apart."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: \udxxx
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_csv(path: Path, rows: Iterable[Dict], columns: Sequence[str]) -> None:
    """A header of `columns`, then one line per row (keys not in `columns` left out), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    # a file name that is not UTF-8 (surrogate escapes) is written as \\xe9, never a crash
    atomic_write(path, lambda f: f.write(readable(text.getvalue()).encode()))


@dataclass
class RunState:
    """Where a run stands: what last.pt records besides the weights, and what summary.json reports."""

    overrides: List[str]  # the command line the run was started with
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in epoch + 1 (a mid-epoch checkpoint)
    best: Dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_accuracy": None, "val_loss": None})
    last_improvement: int = 0  # the epoch that last raised the best accuracy by more than min_delta
    history: List[Dict[str, Any]] = field(default_factory=list)  # one metrics row per completed epoch
    wall_seconds: float = 0.0  # time spent by earlier processes of this run (resumed runs)

    def record(self, row: Dict[str, Any], min_delta: float) -> bool:
        """Add a completed epoch's row; returns whether it is the best so far (with no validation
        split every epoch is: the last one is kept as best)."""
        accuracy, best = row["val_accuracy"], self.best["val_accuracy"]
        is_best = accuracy is None or best is None or accuracy > best
        if accuracy is None or best is None or accuracy > best + min_delta:
            self.last_improvement = row["epoch"]
        if is_best:
            self.best = {"epoch": row["epoch"], "val_accuracy": accuracy, "val_loss": row["val_loss"]}
        self.epoch, self.step = row["epoch"], 0
        self.history.append(row)
        return is_best


def summary(
    status: str,
    run_dir: Path,
    cfg,
    state: RunState,
    facts: Dict[str, Any],
    wall_seconds: float,
    resumed_with: List[str],
    warning: Optional[str],
) -> Dict[str, Any]:
    """summary.json's document for a run as it stands. `facts`: what the trainer knows about the
    model and machine (parameters, device, device_name, threads, versions, started_at)."""
    history = state.history
    document = {
        "status": status,
        "run_dir": str(run_dir),
        "overrides": state.overrides,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "scheduler": cfg.scheduler.name,
        "parameters": facts["parameters"],
        "epochs": cfg.epochs,
        "epochs_completed": state.epoch,
        "best": state.best,
        "final": history[-1] if history else {},
        "wall_seconds": round(wall_seconds, 3),
        "seconds_per_epoch": round(sum(r["seconds"] for r in history) / len(history), 3) if history else None,
        **{key: facts[key] for key in ("device", "device_name", "threads", "versions", "started_at")},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if resumed_with:
        document["resumed_with"] = resumed_with
    if status == "early_stopped":
        document["early_stopping"] = {
            "patience": cfg.early_stopping.patience,
            "min_delta": cfg.early_stopping.min_delta,
            "last_improvement": state.last_improvement,
        }
    if history and status in ("completed", "early_stopped"):
        document["learned"] = warning is None
        if warning:
            document["warning"] = warning
    return document


def copy_atomically(source: Path, target: Path) -> None:
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))


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


LOCK_FILE = ".lock"
_held_locks: Dict[str, int] = {}  # resolved run folder -> the open, locked file descriptor


def lock_run(run_dir: Path) -> None:
    """Take the exclusive write lock of `run_dir` for this process (again: nothing happens).

    Raises UserError naming the PID and host of the process that holds it.
    """
    key = str(Path(run_dir).resolve())
    if key in _held_locks:
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never write through a planted link
    except OSError as error:
        raise UserError(f"cannot lock {run_dir}: {path} cannot be opened as a plain file ({error.strerror}).") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"PID {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
        raise UserError(f"{run_dir} is in use by {who}; wait until it ends (or stop it), then try again.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _held_locks[key] = fd
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):  # a writer killed mid-write left these
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


@contextmanager
def exclusive(path: Optional[Path]) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting for other processes (no lock for None): for files
    several processes create or change in turns (an Optuna study, the MLflow database)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def unlock_run(run_dir: Path) -> None:
    """Release the lock lock_run took (a no-op when this process does not hold it)."""
    fd = _held_locks.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def discard_unstarted(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra wrote before the run failed to start
    (never one another process holds)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.resolve() == Path.cwd().resolve():
        return
    try:
        lock_run(run_dir)
    except UserError:  # another process writes this folder: its files are not ours to remove
        return
    unlock_run(run_dir)
    entries = {p.name for p in run_dir.iterdir()}
    if not entries <= {".hydra", "train.log", "checkpoints", "model.txt", LOCK_FILE}:
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
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: the failure is what matters now
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    if summary.get("status") in (None, "completed"):
        summary["status"] = "failed"
    summary.update(error=error, overrides=overrides, run_dir=str(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, summary)


def resolve_checkpoint(value: str, outputs_dir: str, key: str, prefer=("best.pt", "last.pt")) -> Path:
    """`latest`, a run folder (its first checkpoint in `prefer`) or a checkpoint file -> a path.

    `key` names the option in messages (run=, resume=).
    """
    if not str(value).strip():
        raise UserError(f"{key}= is empty; give a run folder, a .pt checkpoint or latest.")
    if value == "latest":
        link = Path(outputs_dir) / "train" / "latest"
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
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path} holds no checkpoints/{' or '.join(prefer)}; is it a train run folder?")
    return path


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.pt), else the checkpoint's folder."""
    parent = Path(checkpoint_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent
