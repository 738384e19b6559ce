"""`mnist train -m hparams_search=optuna`: the search loop of our Hydra sweeper plugin
(hydra_plugins/mnist_optuna_sweeper), over Optuna's ask/tell API.

Each round asks the study for as many trials as the launcher runs at once, launches them as
ordinary jobs (basic, joblib, submitit, slurm) and tells the study how each ended, read from its run
folder (outcome.py). The study lives in storage (study.py), so a killed sweep continues where it
stopped and several sweeps share one study. The search space is space.py; the settings' checks and
the sampler are settings.py; optimization_results.yaml is results.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from mnist_cli.config.hydra_refusals import composition_problem
from mnist_cli.errors import UserError, WriteFailed, first_line
from mnist_cli.runs.locks import exclusive
from mnist_cli.runs.state import record_failure
from mnist_cli.search.settings import check_sampler, check_settings, make_sampler, refuse
from mnist_cli.search.trial import job_overrides

say = logging.getLogger(__name__).info  # the sweep's own lines, as Hydra's launchers write theirs


def exhausted(study) -> bool:
    """Whether the study's sampler has no point left to try (a finished grid)."""
    check = getattr(study.sampler, "is_exhausted", None)
    return bool(check and check(study))


def ask_round(study, settings, space, width: int) -> List:
    """Up to `width` new trials, claimed by this worker, so that the study holds at most n_trials;
    call under the study's lock. Empty when the study is done or the sampler has nothing left."""
    from mnist_cli.search import study as studies

    batch = []
    todo = settings.n_trials - studies.counted(study.get_trials(deepcopy=False))
    for _ in range(min(width, todo)):
        study.sampler = make_sampler(settings, len(study.get_trials(deepcopy=False)))
        if exhausted(study):
            say(f"the sampler has tried every point it has ({len(study.get_trials(deepcopy=False))} trials)")
            break
        trial = study.ask(space.distributions)
        studies.claim(study, trial)
        batch.append(trial)
    return batch


def launchable(study, batch: List, space, location: str) -> List[List[str]]:
    """Each trial's job overrides, in order; a trial whose values clash with each other (model=mlp
    with an int model.hidden) fails here with one line, and gets no job (None)."""
    from optuna.trial import TrialState

    from mnist_cli.search import optuna_internals as internals

    jobs = []
    for trial in batch:
        overrides = job_overrides(space.fixed, location, study.study_name, trial)
        problem = composition_problem("train", overrides)
        if problem is not None:
            values = " ".join(f"{k}={v}" for k, v in trial.params.items())
            say(f"trial {trial.number} ({values}) failed before it started: {problem}")
            internals.set_trial_attr(study, trial, "error", problem)
            internals.tell(study, trial.number, state=TrialState.FAIL)
            overrides = None
        jobs.append(overrides)
    return jobs


def launch_round(study, launcher, batch: List, jobs: List[List[str]], job_idx: int, metric: str) -> None:
    """Run the round's jobs and tell the study how each ended. A job that raised is failed with
    one line. When the launcher raises (Ctrl-C, a lost array task, a killed worker), its finished
    jobs count as they ended and the unfinished ones run again; only Ctrl-C stops the sweep."""
    from hydra.core.utils import JobStatus

    from mnist_cli.search.hydra_internals import job_error
    from mnist_cli.search.outcome import settle, trial_run

    started = [(trial, overrides) for trial, overrides in zip(batch, jobs) if overrides is not None]
    if not started:
        return
    try:
        returns = launcher.launch([overrides for _, overrides in started], initial_job_idx=job_idx)
    except (KeyboardInterrupt, SystemExit):
        for trial, _ in started:
            settle(study, trial.number, trial_run(study, trial), metric, "its sweep was stopped")
        raise
    except Exception as error:
        say(f"the launcher failed ({type(error).__name__}: {first_line(error)}); its unfinished trials run again")
        for trial, _ in started:
            settle(study, trial.number, trial_run(study, trial), metric, "its launcher failed")
        return
    for (trial, _), job in zip(started, returns):
        run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
        if job.status == JobStatus.FAILED:  # an exception our task does not turn into a sentence: a bug
            error = job_error(job)
            say(f"trial {trial.number} failed: {type(error).__name__}: {first_line(error)}")
            record_failure(run_dir, f"{type(error).__name__}: {first_line(error)}", list(job.overrides))
        settle(study, trial.number, run_dir, metric, "its job ended")


def run_trials(study, settings, launcher, space, location: str, lock, width: int, metric: str) -> None:
    """Ask, launch and tell rounds of trials until the study holds hydra.sweeper.n_trials of them."""
    from optuna.trial import TrialState

    from mnist_cli.search import optuna_internals as internals
    from mnist_cli.search import study as studies
    from mnist_cli.search.outcome import settle_abandoned

    done_or_running = studies.counted(study.get_trials(deepcopy=False))
    say(
        f"optuna study {study.study_name} ({study.direction.name.lower()} {metric}, {settings.pruner} pruner) in "
        f"{studies.shown(location)}: {done_or_running} of {settings.n_trials} trials done or running"
    )
    job_idx, rounds = 0, 0
    with studies.Heartbeat(internals.storage(study)) as heartbeat:
        while True:
            with exclusive(lock):
                settle_abandoned(study, metric)
                batch = ask_round(study, settings, space, width)
            if not batch:
                if rounds == 0 and studies.counted(study.get_trials(deepcopy=False)) >= settings.n_trials:
                    say(
                        f"study {study.study_name} already has its {settings.n_trials} trials; "
                        "raise hydra.sweeper.n_trials to run more"
                    )
                break
            rounds += 1
            heartbeat.trial_ids.update(dict.fromkeys(internals.trial_id(t) for t in batch))
            try:
                jobs = launchable(study, batch, space, location)
                launch_round(study, launcher, batch, jobs, job_idx, metric)
            finally:
                for trial in batch:
                    heartbeat.trial_ids.pop(internals.trial_id(trial), None)
            # each job its own folder, even when the launcher failed
            job_idx += sum(overrides is not None for overrides in jobs)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if running:
        say(f"{running} trials of study {study.study_name} are still running in other workers")


def _checked(settings, config: DictConfig, arguments: List[str]):
    """The search space and the direction, once every check that needs no study has passed: a mistake
    every trial would make is refused once, here."""
    from mnist_cli.config.checks import check_config
    from mnist_cli.search.space import check_values, search_space

    direction = check_settings(settings, config.optimized_metric)
    try:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        check_config(task, "train", list(arguments))
    except UserError as error:
        refuse(str(error))
    check_sampler(settings)
    space = search_space(settings.params, arguments)
    check_values(space)
    return space, direction


def sweep(settings, config: DictConfig, launcher, arguments: List[str]) -> None:
    """Run trials until the study has hydra.sweeper.n_trials of them (this process and any other
    working on the study together)."""
    try:
        import optuna  # noqa: F401 (is the extra installed?)
    except ImportError:
        refuse("hparams_search=optuna needs Optuna: pip install 'mnist-cli[optuna]'.")
    from mnist_cli.search import study as studies
    from mnist_cli.search.launchers import jobs_at_once
    from mnist_cli.search.results import write_results

    metric = config.optimized_metric
    space, direction = _checked(settings, config, arguments)
    try:
        study, location, lock = studies.open_study(settings, config.outputs_dir, space.setup, direction, metric)
    except UserError as error:
        refuse(str(error))
    width = settings.n_jobs or jobs_at_once(config.hydra.launcher)
    sweep_dir = Path(config.hydra.sweep.dir)
    try:
        run_trials(study, settings, launcher, space, location, lock, width, metric)
    except studies.damaged_storage_errors() as error:
        if sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
            sweep_dir.rmdir()
        refuse(studies.damaged(location, error))
    try:
        write_results(sweep_dir, study, location, settings.n_trials, metric)
    except WriteFailed as error:  # the study itself is saved; only the summary file is missing
        print(f"mnist train: {error}", file=sys.stderr)
