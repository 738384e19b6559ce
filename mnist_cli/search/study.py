"""An Optuna study kept in storage, as sweeps and their trials share it: where it lives, how a sweep
opens it (the same command continues it, another is refused), which trials count towards n_trials,
the trials a stopped worker left behind, and one worker at a time asking.

Several `mnist train hparams_search=optuna` processes (shells, a SLURM array) may work on one study.
A worker counts and asks under an exclusive lock on a file next to a file storage (SQLite, journal),
so together they run exactly n_trials. It marks its running trials alive every HEARTBEAT_SECONDS;
a running trial whose worker is gone (its process ended, on this host; silent for STALE_SECONDS,
on another) is failed and queued again once with the same parameters, and does not count.

Imports optuna (extra mnist-cli[optuna]); never torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_cli.errors import UserError, first_line
from mnist_cli.paths import sqlite_file
from mnist_cli.runs.locks import exclusive
from mnist_cli.search import optuna_internals as internals

HEARTBEAT_SECONDS = 30
STALE_SECONDS = 300
# trial user attributes (shown by optuna-dashboard too)
WORKER = "worker"  # "<host> <pid> <process start>" of the sweep process running the trial
ALIVE = "alive_at"  # time.time() of that process's last heartbeat
RETRY_OF = "retry_of"  # the number of the stopped trial this one runs again
RUN = "run"  # the trial's run folder
SETUP = "setup"  # study user attribute: the overrides the study was made with
PRUNERS = ("median", "hyperband", "none")

optuna.logging.set_verbosity(optuna.logging.WARNING)  # trial-by-trial INFO lines would repeat our own


SQLITE = "sqlite:///"


def default_location(outputs_dir: str, study_name: str) -> str:
    """`sqlite:///<outputs_dir>/optuna/<study_name>.db` (absolute: a job may run in another folder)."""
    return f"{SQLITE}{Path(outputs_dir).resolve() / 'optuna' / f'{study_name}.db'}"


def absolute_location(location: str) -> str:
    """`location` with a relative SQLite or journal file made absolute: jobs may run elsewhere.
    Raises ValueError for an in-memory database, which the jobs could not reach."""
    if location.startswith("sqlite:") and sqlite_file(location) is None:
        raise ValueError(
            "an in-memory SQLite database cannot be shared with the trials' jobs; give a file, e.g. sqlite:///study.db"
        )
    database = sqlite_file(location)
    if database is not None:
        return f"{SQLITE}{database.resolve()}"
    return location if "://" in location else str(Path(location).resolve())


def shown(location: str) -> str:
    """`location` fit to print or save: a database URL's password masked."""
    if "://" not in location or "@" not in location:
        return location
    try:
        from sqlalchemy.engine import make_url

        return make_url(location).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: show only its scheme
        return location.split("://", 1)[0] + "://…"


def open_storage(location: str) -> optuna.storages.BaseStorage:
    """The storage `location` names: a database URL (sqlite:///, postgresql://, mysql://), else the
    path of an Optuna journal file (for a shared file system)."""
    if "://" not in location:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(location))
    database = sqlite_file(location)
    engine = {}
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # several workers and their jobs write to one file
    return optuna.storages.RDBStorage(location, engine_kwargs=engine)


def lock_path(location: str) -> Optional[Path]:
    """The file a worker locks while it counts and asks; None for a database server (no shared file)."""
    database = sqlite_file(location)
    if database is not None:
        return database.with_name(database.name + ".lock")
    return None if "://" in location else Path(location + ".ask.lock")


def make_pruner(name: str, warmup_epochs: int, startup_trials: int) -> optuna.pruners.BasePruner:
    """median: stop a trial whose value after an epoch is worse than the median of the earlier
    trials' at that epoch (never within its first `warmup_epochs` epochs, nor before
    `startup_trials` trials have finished); hyperband: successive halving over epochs; none."""
    if name == "median":  # steps are epochs counted from 1: pruning may start after epoch warmup_epochs + 1
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "hyperband":  # max_resource "auto": the epochs of the first finished trial, read from the
        # storage, so the sweep and every job agree on the brackets (even when epochs is searched)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def counted(trials: List[FrozenTrial]) -> int:
    """Trials that count towards n_trials: finished (complete, pruned, failed) or running, not
    waiting, and not the stopped ones queued again (their rerun counts instead)."""
    rerun = {t.user_attrs.get(RETRY_OF) for t in trials} - {None}
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in rerun)


def _process_start(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot, from /proc), or None: no such process,
    or no /proc. With the PID it names one process, even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def worker_name() -> str:
    """This process as a WORKER attribute: host, PID and start time."""
    return f"{socket.gethostname()} {os.getpid()} {_process_start(os.getpid())}"


def _worker_gone(trial: FrozenTrial, host: str, now: float) -> bool:
    name, pid, started = (str(trial.user_attrs.get(WORKER, "")).split(" ") + ["", ""])[:3]
    if name == host and pid.isdigit() and started not in ("", "None"):
        return _process_start(int(pid)) != started  # this host's process table knows for sure
    alive = trial.user_attrs.get(ALIVE)
    last = alive if isinstance(alive, (int, float)) else trial.datetime_start.timestamp()
    return now - last > STALE_SECONDS


def stop_trial(study: optuna.Study, number: int, why: str) -> None:
    """Fail a trial that was stopped before it could be judged, and queue its parameters again
    (once: a rerun that is stopped too is not queued a third time)."""
    trial = study.get_trials(deepcopy=False)[number]
    try:
        internals.set_trial_attr(study, trial, "stopped", why)
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
    trial.set_user_attr(WORKER, worker_name())
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


def damaged_storage_errors() -> tuple:
    """The exceptions a damaged SQLite study file raises once it is open (Optuna wraps some in its own type,
    others come straight from SQLAlchemy): for one sentence instead of a traceback."""
    from sqlalchemy.exc import DatabaseError

    return optuna.exceptions.StorageInternalError, DatabaseError


def innermost_reason(error: BaseException) -> str:
    """The first line of the error at the bottom of `error`'s chain (SQLite's own words, under Optuna's and SQLAlchemy's)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return first_line(error)


def damaged(location: str, error: BaseException) -> str:
    """The sentence for a study whose storage answers with a damaged database."""
    return (
        f"the Optuna storage {shown(location)} is damaged ({innermost_reason(error)}); move it away "
        "and run the search again, or give another hydra.sweeper.study_name (the trials' results stay in their run "
        "folders: mnist report outputs/multirun)."
    )


def study_name(given: Optional[str], setup: List[str]) -> str:
    """The given name, else one made from the setup: the same command continues the same study,
    another command starts its own."""
    if given:
        return given
    return "mnist-" + hashlib.sha1(json.dumps(setup).encode()).hexdigest()[:8]


def open_study(settings, outputs_dir: str, setup: List[str], direction: str, metric: str):
    """(the study, its storage location, the lock file): created, or loaded when the same command
    (or a worker beside this one) made it. Raises UserError for a study made by another command,
    or a storage that cannot be opened."""
    name = study_name(settings.study_name, setup)
    try:
        location = absolute_location(settings.storage or default_location(outputs_dir, name))
    except ValueError as error:
        raise UserError(f"hydra.sweeper.storage: {error}.") from None
    lock = lock_path(location)
    pruner = make_pruner(settings.pruner, settings.warmup_epochs, settings.startup_trials)
    try:
        with exclusive(lock):  # two workers starting at once would both create the tables
            study = optuna.create_study(
                study_name=name, storage=open_storage(location), direction=direction, pruner=pruner, load_if_exists=True
            )
            made_with = study.user_attrs.get(SETUP)
            if made_with is None:
                study.set_user_attr(SETUP, setup)
    except damaged_storage_errors() as error:
        raise UserError(damaged(location, error)) from None
    except Exception as error:  # a bad URL, an unreachable server, an unwritable folder
        raise UserError(f"the Optuna storage {shown(location)} cannot be opened ({first_line(error)}).") from None
    where = f"study {name} in {shown(location)}"
    if made_with is not None and made_with != setup:
        differ = sorted(set(setup) ^ set(made_with))
        raise UserError(
            f"{where} was made with other settings ({', '.join(differ)} differ); "
            "give the same overrides, or another hydra.sweeper.study_name."
        )
    if study.direction.name.lower() != direction:
        raise UserError(
            f"{where} {study.direction.name.lower()}s its value, and optimized_metric={metric} is "
            f"{direction}d; give another hydra.sweeper.study_name."
        )
    return study, location, lock
