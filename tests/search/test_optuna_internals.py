"""Optuna's private parts that search/optuna_internals.py uses: each test names Optuna and the file
to update when an upgrade changes them."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed: pip install -e '.[optuna]'")
from mnist_cli.search import optuna_internals as internals  # noqa: E402

UPDATE = "update mnist_cli/search/optuna_internals.py"


def changed(what: str) -> str:
    return f"Optuna {optuna.__version__} {what}; {UPDATE}"


def test_a_study_keeps_its_storage_in_study_storage():
    study = optuna.create_study()
    assert hasattr(study, "_storage"), changed("no longer has Study._storage")
    assert isinstance(internals.storage(study), optuna.storages.BaseStorage), changed(
        "keeps something other than a BaseStorage in Study._storage"
    )


def test_live_and_frozen_trials_share_their_storage_id():
    study = optuna.create_study()
    live = study.ask()
    frozen = study.get_trials(deepcopy=False)[live.number]
    for trial, kind in ((live, "Trial"), (frozen, "FrozenTrial")):
        assert hasattr(trial, "_trial_id"), changed(f"no longer has {kind}._trial_id")
    assert isinstance(internals.trial_id(live), int), changed("has a Trial._trial_id that is not a number")
    assert internals.trial_id(live) == internals.trial_id(frozen), changed("gives a trial two _trial_id values")


def test_a_frozen_trials_attributes_are_written_and_read_through_the_storage():
    study = optuna.create_study()
    number = study.ask().number
    frozen = study.get_trials(deepcopy=False)[number]
    internals.set_trial_attr(study, frozen, "run", "outputs/x")
    assert study.trials[frozen.number].user_attrs.get("run") == "outputs/x", changed(
        "no longer sets a trial's user attribute through Study._storage.set_trial_user_attr(_trial_id)"
    )
    assert internals.trial_attrs(study, frozen) == {"run": "outputs/x"}, changed(
        "no longer reads a trial through Study._storage.get_trial(_trial_id)"
    )


def test_a_trial_reopened_by_its_id_reports_and_asks_the_pruner(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = internals.trial_id(study.ask())
    elsewhere = optuna.load_study(study_name="s", storage=storage, pruner=optuna.pruners.NopPruner())
    trial = internals.live_trial(elsewhere, trial_id)  # as a trial's job does, in another process
    trial.report(0.5, 1)
    assert trial.should_prune() is False, changed("no longer lets Trial(study, trial_id) ask the pruner")
    assert study.trials[0].intermediate_values == {1: 0.5}, changed(
        "no longer reports through a trial made with Trial(study, trial_id)"
    )


def test_a_grid_samplers_stop_outside_optimize_is_a_runtime_error_naming_stop():
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1]}))
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1])})
    try:
        study.tell(trial.number, 1.0)
    except RuntimeError as error:  # optuna_internals.tell lets this one through, and only this one
        assert "stop" in str(error), changed(f"refuses study.stop() outside optimize in other words ({error})")
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE, changed(
        "no longer saves a trial told when its GridSampler stops the study"
    )
    internals.tell(study, trial.number, 1.0)  # told twice: skipped, no error
