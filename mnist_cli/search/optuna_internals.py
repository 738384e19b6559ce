"""The parts of Optuna that mnist-cli uses beyond its documented API, in one place.

The sweep writes user attributes of trials it holds only as FrozenTrials (a job's run folder, why a
trial stopped), and a trial's job reopens its trial by id: both need the study's storage and the
trial's id, which Optuna keeps private. tests/search/test_optuna_internals.py fails, naming Optuna
and this file, when an upgrade changes any of it.
"""

from __future__ import annotations

from typing import Any, Dict

import optuna


def storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage the study reads and writes (Study._storage)."""
    return study._storage


def trial_id(trial) -> int:
    """The storage's id of a trial, live or frozen (_trial_id): unique across the studies of one storage."""
    return trial._trial_id


def set_trial_attr(study: optuna.Study, trial, key: str, value: Any) -> None:
    """Set a user attribute of any trial of the study, frozen ones included (a live Trial has its own)."""
    storage(study).set_trial_user_attr(trial_id(trial), key, value)


def trial_attrs(study: optuna.Study, trial) -> Dict[str, Any]:
    """The trial's user attributes as the storage holds them now (a job may have set some since)."""
    return storage(study).get_trial(trial_id(trial)).user_attrs


def live_trial(study: optuna.Study, number_in_storage: int) -> optuna.trial.Trial:
    """The running trial with storage id `number_in_storage`, to report to and ask the pruner from
    another process (Optuna's docs advise against calling Trial() directly)."""
    return optuna.trial.Trial(study, number_in_storage)


def tell(study: optuna.Study, number: int, value=None, state=None) -> None:
    """study.tell, once per trial. A sampler that ends the study when it has tried everything
    (GridSampler) calls study.stop(), which Optuna allows only inside study.optimize and refuses with
    a RuntimeError that names stop: the trial is told all the same (Optuna saves it first), and the
    loop asks the sampler itself (search.sweep.exhausted)."""
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as error:
        if "stop" not in str(error):
            raise
