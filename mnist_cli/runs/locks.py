"""Who writes a run folder: one process at a time, holding an exclusive lock on <run>/.lock.

The kernel frees the lock when the process ends, however it ends (kill -9 included), so a lock
never outlives its writer. `exclusive` serialises processes that take turns on one shared file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

from mnist_cli.errors import UserError
from mnist_cli.runs.folder import RunFolder

_held_locks: Dict[str, int] = {}  # resolved run folder -> the open, locked file descriptor


def lock_run(run_dir: Path) -> None:
    """Take the exclusive write lock of `run_dir` for this process (again: nothing happens).

    Raises UserError naming the PID and host of the process that holds it.
    """
    key = str(Path(run_dir).resolve())
    if key in _held_locks:
        return
    run = RunFolder(Path(run_dir))
    path = run.lock
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
    for folder in (run.path, run.checkpoints):  # a writer killed mid-write left these
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
    run = RunFolder(run_dir)
    if not set(run_dir.iterdir()) <= {run.hydra, run.train_log, run.checkpoints, run.model_table, run.lock}:
        return
    if run.checkpoints.is_dir() and any(run.checkpoints.iterdir()):
        return
    shutil.rmtree(run_dir)
    try:
        run_dir.parent.rmdir()  # the date folder, if this was its only run
    except OSError:
        pass
