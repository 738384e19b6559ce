"""A training job's side of an Optuna trial: the job records its run folder in the trial, reports
after every epoch the value the run would end with, and stops when the study's pruner says so.
All of it goes through the study's storage, so it works from any launcher's process or machine.
The sweep tells the job where its trial is through three environment variables (job_overrides).
A storage that fails (locked, unreachable) is one warning: the job then trains to its end, unpruned.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from mnist_cli.errors import first_line

# set for each trial's job by the sweep (job_overrides, through hydra.job.env_set)
ENV_STORAGE, ENV_STUDY, ENV_TRIAL = "MNIST_OPTUNA_STORAGE", "MNIST_OPTUNA_STUDY", "MNIST_OPTUNA_TRIAL_ID"


def job_overrides(fixed: List[str], location: str, name: str, trial) -> List[str]:
    """A trial's job: the fixed overrides, the trial's parameters, and where its study is (for pruning)."""
    from mnist_cli.config.compose import quoted_value
    from mnist_cli.search.optuna_internals import trial_id

    return [
        *fixed,
        *(f"{k}={v}" for k, v in trial.params.items()),
        f"++hydra.job.env_set.{ENV_STORAGE}={quoted_value(location)}",
        f"++hydra.job.env_set.{ENV_STUDY}={quoted_value(name)}",
        f"++hydra.job.env_set.{ENV_TRIAL}={trial_id(trial)}",
    ]


def _warn(error: Exception) -> None:
    print(
        f"warning: the Optuna study could not be reached ({first_line(error)}); this trial trains to its end, unpruned.",
        file=sys.stderr,
    )


@dataclass
class StudyTrial:
    trial: object  # optuna.Trial, of the study loaded with the sweep's pruner
    pruner: str  # its name, for the message
    reachable: bool = True  # False after the storage failed once: no more reports, no pruning

    def report(self, epoch: int, value: Optional[float]) -> None:
        """Report the value the run would have if it ended after `epoch` (nothing without a value)."""
        if value is None or not self.reachable:
            return
        try:
            self.trial.report(value, epoch)
        except Exception as error:  # the storage, not the training, failed
            self.reachable = False
            _warn(error)

    def should_stop(self) -> bool:
        """Whether the study's pruner stops this trial now (False once the storage failed)."""
        if not self.reachable:
            return False
        try:
            return self.trial.should_prune()
        except Exception as error:
            self.reachable = False
            _warn(error)
            return False


def study_trial(sweeper_settings, run_dir: Path) -> Optional[StudyTrial]:
    """This job's trial when the job is one (its run folder recorded in it), else None (also when
    the storage cannot be reached: one warning, and the job trains as a plain run)."""
    if ENV_TRIAL not in os.environ:
        return None
    import optuna

    from mnist_cli.search import study as studies
    from mnist_cli.search.optuna_internals import live_trial

    pruner = studies.make_pruner(
        sweeper_settings.pruner, sweeper_settings.warmup_epochs, sweeper_settings.startup_trials
    )
    try:
        storage = studies.open_storage(os.environ[ENV_STORAGE])
        study = optuna.load_study(study_name=os.environ[ENV_STUDY], storage=storage, pruner=pruner)
        trial = live_trial(study, int(os.environ[ENV_TRIAL]))
        trial.set_user_attr(studies.RUN, str(run_dir))
    except Exception as error:
        _warn(error)
        return None
    return StudyTrial(trial, sweeper_settings.pruner)
