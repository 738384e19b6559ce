"""How a trial ended, read from its job's run folder and told to the study: a value, pruned, failed,
or stopped before the end (killed, Ctrl-C, never started), which is not judged and runs again once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from optuna.trial import TrialState

from mnist_cli.runs import leaderboard
from mnist_cli.runs.run_records import run_record
from mnist_cli.search import optuna_internals as internals
from mnist_cli.search.study import RUN, WORKER, abandoned, stop_trial

say = logging.getLogger(__name__).info  # the sweep's own lines, as Hydra's launchers write theirs
STOPPED = ("interrupted", "unfinished")  # a job that did not end by itself: its parameters run again


def _outcome(run_dir: Path, metric: str):
    """(status of the job's run folder, its value of `metric` or None)."""
    if not run_dir.is_dir():
        return "unfinished", None
    record = run_record(run_dir)
    return record["status"], record[leaderboard.sort_metric(metric).column]


def settle(study, number: int, run_dir: Optional[Path], metric: str, why: str) -> str:
    """Tell the study how trial `number` ended, read from its job's run folder; returns the status.
    A job stopped before the end (killed, Ctrl-C, never started) is not judged: its parameters run
    again (once)."""
    status, value = _outcome(run_dir, metric) if run_dir is not None else ("unfinished", None)
    trial = study.get_trials(deepcopy=False)[number]
    if run_dir is not None and RUN not in trial.user_attrs and trial.state == TrialState.RUNNING:
        internals.set_trial_attr(study, trial, RUN, str(run_dir))  # a job that failed early
    if status in ("completed", "early_stopped") and value is not None:
        internals.tell(study, number, value)
    elif status == "pruned":
        internals.tell(study, number, state=TrialState.PRUNED)
    elif status in STOPPED:
        stop_trial(study, number, f"{why}; its job was {status}")
    else:  # failed, diverged, damaged, or no value of the metric
        internals.tell(study, number, state=TrialState.FAIL)
    return status


def trial_run(study, trial) -> Optional[Path]:
    """The run folder the trial's job recorded in the study, or None (it never started)."""
    run = internals.trial_attrs(study, trial).get(RUN)
    return Path(run) if run else None


def settle_abandoned(study, metric: str) -> None:
    """Settle the running trials whose worker is gone: a job that finished counts as it ended."""
    for trial in abandoned(study):
        run = trial.user_attrs.get(RUN)
        why = f"its worker ({trial.user_attrs.get(WORKER)}) stopped"
        status = settle(study, trial.number, Path(run) if run else None, metric, why)
        say(f"trial {trial.number} lost its worker ({status}{'; it runs again' if status in STOPPED else ''})")
