"""An Optuna study kept in storage, as sweeps and their trials share it: where it lives, which trials
count towards n_trials, the trials a stopped worker left behind, and one worker at a time asking.

Several `mnist train hparams_search=optuna` processes (shells, a SLURM array) may work on one study.
A worker counts and asks under an exclusive lock on a file next to a file storage (SQLite, journal),
so together they run exactly n_trials. It marks its running trials alive every HEARTBEAT_SECONDS;
a running trial whose worker is gone (a dead PID on this host, or silent for STALE_SECONDS) is
failed and queued again once with the same parameters, and does not count.

Imports optuna (extra mnist-cli[optuna]); never torch.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_SECONDS = 30
STALE_SECONDS = 300
# trial user attributes (shown by optuna-dashboard too)
WORKER = "worker"  # "<host> <pid>" of the sweep process running the trial
ALIVE = "alive_at"  # time.time() of that process's last heartbeat
RETRY_OF = "retry_of"  # the number of the stopped trial this one runs again
RUN = "run"  # the trial's run folder
SETUP = "setup"  # study user attribute: the overrides the study was made with
PRUNERS = ("median", "hyperband", "none")

optuna.logging.set_verbosity(optuna.logging.WARNING)  # trial-by-trial INFO lines would repeat our own


def default_location(outputs_dir: str, study_name: str) -> str:
    """`sqlite:///<outputs_dir>/optuna/<study_name>.db` (absolute: a job may run in another folder)."""
    return f"sqlite:///{Path(outputs_dir).resolve() / 'optuna' / f'{study_name}.db'}"


def _sqlite_file(location: str) -> Optional[Path]:
    prefix = "sqlite:///"
    if location.startswith(prefix) and location[len(prefix) :] not in ("", ":memory:"):
        return Path(location[len(prefix) :])
    return None


def open_storage(location: str) -> optuna.storages.BaseStorage:
    """The storage `location` names: a database URL (sqlite:///, postgresql://, mysql://), else the
    path of an Optuna journal file (for a shared file system)."""
    if "://" not in location:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(location))
    database = _sqlite_file(location)
    engine = {}
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # several workers and their jobs write to one file
    return optuna.storages.RDBStorage(location, engine_kwargs=engine)


def lock_path(location: str) -> Optional[Path]:
    """The file a worker locks while it counts and asks; None for a database server (no shared file)."""
    database = _sqlite_file(location)
    if database is not None:
        return database.with_name(database.name + ".lock")
    return None if "://" in location else Path(location + ".ask.lock")


@contextmanager
def exclusive(path: Optional[Path]) -> Iterator[None]:
    """Hold an exclusive flock on `path` (waits for the other workers); no lock for None."""
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


def make_pruner(name: str, warmup_epochs: int, startup_trials: int) -> optuna.pruners.BasePruner:
    """median: stop a trial whose value after an epoch is worse than the median of the earlier
    trials' at that epoch (never within its first `warmup_epochs` epochs, nor before
    `startup_trials` trials have finished); hyperband: successive halving over epochs; none."""
    if name == "median":  # steps are epochs counted from 1: pruning may start after epoch warmup_epochs + 1
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def counted(trials: List[FrozenTrial]) -> int:
    """Trials that count towards n_trials: finished (complete, pruned, failed) or running, not
    waiting, and not the stopped ones queued again (their rerun counts instead)."""
    rerun = {t.user_attrs.get(RETRY_OF) for t in trials} - {None}
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in rerun)


def _worker_gone(trial: FrozenTrial, host: str, now: float) -> bool:
    name, _, pid = str(trial.user_attrs.get(WORKER, "")).partition(" ")
    if name == host and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process with that PID: alive
            pass
    alive = trial.user_attrs.get(ALIVE)
    last = alive if isinstance(alive, (int, float)) else trial.datetime_start.timestamp()
    return now - last > STALE_SECONDS


def stop_trial(study: optuna.Study, number: int, why: str) -> None:
    """Fail a trial that was stopped before it could be judged, and queue its parameters again
    (once: a rerun that is stopped too is not queued a third time)."""
    trial = study.get_trials(deepcopy=False)[number]
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "stopped", why)
        study.tell(number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):  # another worker got there first
        return
    if RETRY_OF not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: number})


def abandoned(study: optuna.Study) -> List[FrozenTrial]:
    """The running trials whose worker is gone."""
    host, now = socket.gethostname(), time.time()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _worker_gone(t, host, now)]


def claim(study: optuna.Study, trial: optuna.Trial) -> None:
    """Mark `trial` as run by this process."""
    trial.set_user_attr(WORKER, f"{socket.gethostname()} {os.getpid()}")
    trial.set_user_attr(ALIVE, time.time())


class Heartbeat:
    """A daemon thread that marks this worker's running trials alive every HEARTBEAT_SECONDS."""

    def __init__(self, storage: optuna.storages.BaseStorage):
        self.storage = storage
        self.trial_ids: Dict[int, None] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            for trial_id in list(self.trial_ids):
                try:
                    self.storage.set_trial_user_attr(trial_id, ALIVE, time.time())
                except Exception:  # finished meanwhile, or the storage is busy: try again next beat
                    pass
