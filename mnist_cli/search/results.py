"""optimization_results.yaml in the sweep folder: the study, its trials by state, and its best trial,
which is the trial whose run the leaderboard ranks first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf
from optuna.trial import TrialState

from mnist_cli.runs import leaderboard
from mnist_cli.runs.atomic import atomic_write
from mnist_cli.runs.run_records import run_record
from mnist_cli.search.study import RUN, shown

say = logging.getLogger(__name__).info  # the sweep's own lines, as Hydra's launchers write theirs


def best_trial(study, metric: str):
    """The complete trial, of every worker and every run of the command, that the leaderboard's
    rule ranks first (ties: the first run folder), or None."""
    complete = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run = trial.user_attrs.get(RUN)
        if run and Path(run).is_dir():
            complete[Path(run).resolve()] = trial  # resolved on both sides: a path through a link is one run
    records = [run_record(run) for run in sorted(complete)]
    ranked = leaderboard.rank(records, metric)
    return complete[Path(ranked[0]["run"]).resolve()] if ranked else None


def write_results(sweep_dir: Path, study, location: str, n_trials: int, metric: str) -> None:
    """Write optimization_results.yaml in the sweep folder and say which trial is best."""
    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    best = best_trial(study, metric)
    results = {
        "name": "optuna",
        "study": study.study_name,
        "storage": shown(location),
        "optimized_metric": metric,
        "direction": study.direction.name.lower(),
        "n_trials": n_trials,
        "trials": states,
    }
    if best is not None:
        results.update(
            best_trial=best.number, best_value=best.value, best_params=best.params, best_run=best.user_attrs[RUN]
        )
    text = OmegaConf.to_yaml(OmegaConf.create(results))
    sweep_dir.mkdir(parents=True, exist_ok=True)  # no trial ran here when the study was already complete
    atomic_write(sweep_dir / "optimization_results.yaml", lambda f: f.write(text.encode()))
    if best is None:
        say(f"optuna study {study.study_name}: no trial completed yet")
    else:
        say(
            f"optuna study {study.study_name}: best trial {best.number}, {metric} {best.value:.4g}, "
            f"{' '.join(f'{k}={v}' for k, v in best.params.items())}; run folder: {best.user_attrs[RUN]}"
        )
