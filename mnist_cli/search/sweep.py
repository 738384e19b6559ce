"""`mnist train -m hparams_search=optuna`: the search loop of our Hydra sweeper plugin
(hydra_plugins/mnist_optuna_sweeper), over Optuna's ask/tell API.

The search space is Hydra's override grammar (choice, interval, tag(log, interval(...)), range) in
hydra.sweeper.params and on the command line. Each round asks the study for as many trials as the
launcher runs at once, launches them as ordinary jobs (basic, joblib, submitit, slurm) and tells
the study how each ended, read from its run folder. The study lives in storage (study.py), so a
killed sweep continues where it stopped and several sweeps share one study.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from mnist_cli.config.compose import quoted_value
from mnist_cli.config.hydra_refusals import composition_problem
from mnist_cli.errors import WriteFailed, first_line
from mnist_cli.runs import folder as runs
from mnist_cli.runs import leaderboard
from mnist_cli.runs.metrics import optimization_direction
from mnist_cli.search.trial import ENV_STORAGE, ENV_STUDY, ENV_TRIAL

say = logging.getLogger(__name__).info  # the sweep's own lines, as Hydra's launchers write theirs


def refuse(sentence: str) -> None:
    """A mistake in the sweep's settings: one sentence, exit 2, before any trial runs."""
    print(f"mnist train: {sentence}", file=sys.stderr)
    raise SystemExit(2)


@dataclass
class SearchSpace:
    distributions: Dict  # searched key -> optuna distribution
    fixed: List[str]  # the other overrides, as written; every trial gets them
    setup: List[str]  # both, as written (sorted): what makes two sweeps the same study


def _distribution(override):
    """The optuna distribution of a sweep override (choice, range, interval), else None."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():  # range(start, stop, step): stop is left out, as in Python
        values = list(override.sweep_iterator())
        step = override.value().step
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), step=abs(int(step)))
        return FloatDistribution(min(values), max(values), step=abs(float(step)))
    interval = override.value()
    log = "log" in interval.tags
    if isinstance(interval.start, int) and isinstance(interval.end, int):
        return IntDistribution(interval.start, interval.end, log=log)
    return FloatDistribution(float(interval.start), float(interval.end), log=log)


def search_space(params: Optional[DictConfig], arguments: Sequence[str]) -> SearchSpace:
    """hydra.sweeper.params, then the command line's overrides: a plain value given on the command
    line fixes a key the preset searches; a sweep there (a,b / choice / interval) searches it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as error:
        refuse(f"hydra.sweeper.params cannot be read ({str(error).strip().splitlines()[0]}).")
    by_key = {o.get_key_element(): o for o in parsed}  # the command line comes last and wins
    distributions, fixed = {}, []
    for key, override in by_key.items():
        try:
            found = _distribution(override)
        except Exception as error:  # e.g. interval(1, 0), a log interval from 0
            refuse(f"{key}: {override.input_line} is not a search range Optuna can sample ({error}).")
        if found is None:
            fixed.append(override.input_line)
        else:
            distributions[key] = found
    return SearchSpace(distributions, fixed, sorted(o.input_line for o in by_key.values()))


def study_name(given: Optional[str], space: SearchSpace) -> str:
    """The given name, else one made from the setup: the same command continues the same study,
    another command starts its own."""
    if given:
        return given
    return "mnist-" + hashlib.sha1(json.dumps(space.setup).encode()).hexdigest()[:8]


def job_overrides(space: SearchSpace, location: str, name: str, trial) -> List[str]:
    """A trial's job: the fixed overrides, the trial's parameters, and where its study is (for pruning)."""
    return [
        *space.fixed,
        *(f"{k}={v}" for k, v in trial.params.items()),
        f"++hydra.job.env_set.{ENV_STORAGE}={quoted_value(location)}",
        f"++hydra.job.env_set.{ENV_STUDY}={quoted_value(name)}",
        f"++hydra.job.env_set.{ENV_TRIAL}={trial._trial_id}",
    ]


def _check(settings, metric: str) -> str:
    """Refuse settings no trial could run with; returns the direction: `metric`'s own."""
    if settings.n_trials is None or settings.n_trials < 1:
        refuse(f"hydra.sweeper.n_trials must be a positive whole number, not {settings.n_trials}.")
    from mnist_cli.search.study import PRUNERS

    if settings.pruner not in PRUNERS:
        refuse(f"hydra.sweeper.pruner must be one of {', '.join(PRUNERS)}, not {settings.pruner}.")
    if settings.warmup_epochs < 0 or settings.startup_trials < 0:
        refuse("hydra.sweeper.warmup_epochs and hydra.sweeper.startup_trials must be 0 or more.")
    if settings.n_jobs is not None and settings.n_jobs < 1:
        refuse(f"hydra.sweeper.n_jobs must be a positive whole number or null, not {settings.n_jobs}.")
    direction = optimization_direction(metric)  # the leaderboard ranks the trials the same way
    if settings.direction not in (None, direction):
        refuse(
            f"hydra.sweeper.direction={settings.direction} contradicts optimized_metric={metric}, which is best "
            f"{direction}d; leave hydra.sweeper.direction out (it follows the metric)."
        )
    return direction


def make_sampler(settings, number: int):
    """The sampler that asks for trial `number`: with a seed, seeded seed + number, so workers on one
    study do not draw the same points."""
    from hydra.utils import instantiate

    seed = settings.sampler.get("seed")
    return instantiate(settings.sampler) if seed is None else instantiate(settings.sampler, seed=seed + number)


def _check_sampler(settings) -> None:
    try:
        make_sampler(settings, 0)
    except Exception as error:
        hint = (
            "; a sampler without constant_liar needs ~hydra.sweeper.sampler.constant_liar"
            if "constant_liar" in str(error)
            else ""
        )
        refuse(f"hydra.sweeper.sampler cannot be made ({first_line(error)}){hint}.")


def _check_values(space: SearchSpace) -> None:
    """Refuse a searched value the config cannot take (batch_size=choice(64,abc)), each value
    composed alone with the fixed overrides; values that clash with each other fail their trial."""
    from optuna.distributions import CategoricalDistribution

    for key, distribution in space.distributions.items():
        values = (
            distribution.choices
            if isinstance(distribution, CategoricalDistribution)
            else (distribution.low, distribution.high)
        )
        for value in values:
            problem = composition_problem("train", [*space.fixed, f"{key}={value}"])
            if problem is not None:
                refuse(f"the searched value {key}={value} does not fit the config: {problem}")


def _outcome(run_dir: Path, metric: str):
    """(status of the job's run folder, its value of `metric` or None)."""
    if not run_dir.is_dir():
        return "unfinished", None
    record = leaderboard.run_record(run_dir)
    return record["status"], record[leaderboard.sort_metric(metric).column]


def tell(study, number: int, value=None, state=None) -> None:
    """study.tell, once per trial. A sampler that ends the study when it has tried everything
    (GridSampler) calls study.stop(), which Optuna allows only inside study.optimize: the trial is
    told all the same (Optuna saves it first), and the loop asks the sampler itself (exhausted)."""
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as error:
        if "stop" not in str(error):
            raise


def exhausted(study) -> bool:
    """Whether the study's sampler has no point left to try (a finished grid)."""
    check = getattr(study.sampler, "is_exhausted", None)
    return bool(check and check(study))


def settle(study, number: int, run_dir: Optional[Path], metric: str, why: str) -> str:
    """Tell the study how trial `number` ended, read from its job's run folder; returns the status.
    A job stopped before the end (killed, Ctrl-C, never started) is not judged: its parameters run
    again (once)."""
    from optuna.trial import TrialState

    from mnist_cli.search.study import RUN, stop_trial

    status, value = _outcome(run_dir, metric) if run_dir is not None else ("unfinished", None)
    trial = study.get_trials(deepcopy=False)[number]
    if (
        run_dir is not None and RUN not in trial.user_attrs and trial.state == TrialState.RUNNING
    ):  # a job that failed early
        study._storage.set_trial_user_attr(trial._trial_id, RUN, str(run_dir))
    if status in ("completed", "early_stopped") and value is not None:
        tell(study, number, value)
    elif status == "pruned":
        tell(study, number, state=TrialState.PRUNED)
    elif status in ("interrupted", "unfinished"):
        stop_trial(study, number, f"{why}; its job was {status}")
    else:  # failed, diverged, damaged, or no value of the metric
        tell(study, number, state=TrialState.FAIL)
    return status


def trial_run(study, trial) -> Optional[Path]:
    """The run folder the trial's job recorded in the study, or None (it never started)."""
    from mnist_cli.search.study import RUN

    run = study._storage.get_trial(trial._trial_id).user_attrs.get(RUN)
    return Path(run) if run else None


def settle_abandoned(study, metric: str) -> None:
    """Settle the running trials whose worker is gone: a job that finished counts as it ended."""
    from mnist_cli.search.study import RUN, WORKER, abandoned

    for trial in abandoned(study):
        run = trial.user_attrs.get(RUN)
        status = settle(
            study,
            trial.number,
            Path(run) if run else None,
            metric,
            f"its worker ({trial.user_attrs.get(WORKER)}) stopped",
        )
        say(
            f"trial {trial.number} lost its worker ({status}{'; it runs again' if status in ('interrupted', 'unfinished') else ''})"
        )


def best_trial(study, metric: str):
    """The complete trial, of every worker and every run of the command, that the leaderboard's
    rule ranks first (ties: the first run folder), or None."""
    from optuna.trial import TrialState

    from mnist_cli.search.study import RUN

    complete = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run = trial.user_attrs.get(RUN)
        if run and Path(run).is_dir():
            complete[Path(run).resolve()] = trial  # resolved on both sides: a path through a link is one run
    records = [leaderboard.run_record(run) for run in sorted(complete)]
    ranked = leaderboard.rank(records, metric)
    return complete[Path(ranked[0]["run"]).resolve()] if ranked else None


def write_results(sweep_dir: Path, study, location: str, settings, metric: str) -> None:
    """optimization_results.yaml in the sweep folder: the study, its trials by state, its best trial."""
    from optuna.trial import TrialState

    from mnist_cli.search.study import RUN, shown

    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    best = best_trial(study, metric)
    results = {
        "name": "optuna",
        "study": study.study_name,
        "storage": shown(location),
        "optimized_metric": metric,
        "direction": study.direction.name.lower(),
        "n_trials": settings.n_trials,
        "trials": states,
    }
    if best is not None:
        results.update(
            best_trial=best.number, best_value=best.value, best_params=best.params, best_run=best.user_attrs[RUN]
        )
    text = OmegaConf.to_yaml(OmegaConf.create(results))
    sweep_dir.mkdir(parents=True, exist_ok=True)  # no trial ran here when the study was already complete
    runs.atomic_write(sweep_dir / "optimization_results.yaml", lambda f: f.write(text.encode()))
    if best is None:
        say(f"optuna study {study.study_name}: no trial completed yet")
    else:
        say(
            f"optuna study {study.study_name}: best trial {best.number}, {metric} {best.value:.4g}, "
            f"{' '.join(f'{k}={v}' for k, v in best.params.items())}; run folder: {best.user_attrs[RUN]}"
        )


def damaged(location: str, error: BaseException) -> str:
    """The sentence for a study whose storage answers with a damaged database."""
    from mnist_cli.search import study as studies

    return (
        f"the Optuna storage {studies.shown(location)} is damaged ({studies.innermost_reason(error)}); move it away "
        "and run the search again, or give another hydra.sweeper.study_name (the trials' results stay in their run "
        "folders: mnist report outputs/multirun)."
    )


def open_study(settings, config: DictConfig, space: SearchSpace, direction: str):
    """(the study, its storage location, the lock file): created, or loaded when the same command
    (or a worker beside this one) made it; a study made by another command is refused."""
    import optuna

    from mnist_cli.search import study as studies

    name = study_name(settings.study_name, space)
    try:
        location = studies.absolute_location(settings.storage or studies.default_location(config.outputs_dir, name))
    except ValueError as error:
        refuse(f"hydra.sweeper.storage: {error}.")
    lock = studies.lock_path(location)
    pruner = studies.make_pruner(settings.pruner, settings.warmup_epochs, settings.startup_trials)
    try:
        with runs.exclusive(lock):  # two workers starting at once would both create the tables
            storage = studies.open_storage(location)
            study = optuna.create_study(
                study_name=name, storage=storage, direction=direction, pruner=pruner, load_if_exists=True
            )
            made_with = study.user_attrs.get(studies.SETUP)
            if made_with is None:
                study.set_user_attr(studies.SETUP, space.setup)
    except studies.damaged_storage_errors() as error:
        refuse(damaged(location, error))
    except Exception as error:  # a bad URL, an unreachable server, an unwritable folder
        refuse(f"the Optuna storage {studies.shown(location)} cannot be opened ({first_line(error)}).")
    where = f"study {name} in {studies.shown(location)}"
    if made_with is not None and made_with != space.setup:
        differ = sorted(set(space.setup) ^ set(made_with))
        refuse(
            f"{where} was made with other settings ({', '.join(differ)} differ); "
            "give the same overrides, or another hydra.sweeper.study_name."
        )
    if study.direction.name.lower() != direction:
        refuse(
            f"{where} {study.direction.name.lower()}s its value, and optimized_metric={config.optimized_metric} is "
            f"{direction}d; give another hydra.sweeper.study_name."
        )
    return study, location, lock


def ask_round(study, settings, space: SearchSpace, width: int) -> List:
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


def launchable(study, batch: List, space: SearchSpace, location: str) -> List[List[str]]:
    """Each trial's job overrides, in order; a trial whose values clash with each other (model=mlp
    with an int model.hidden) fails here with one line, and gets no job (None)."""
    from optuna.trial import TrialState

    jobs = []
    for trial in batch:
        overrides = job_overrides(space, location, study.study_name, trial)
        problem = composition_problem("train", overrides)
        if problem is not None:
            values = " ".join(f"{k}={v}" for k, v in trial.params.items())
            say(f"trial {trial.number} ({values}) failed before it started: {problem}")
            study._storage.set_trial_user_attr(trial._trial_id, "error", problem)
            tell(study, trial.number, state=TrialState.FAIL)
            overrides = None
        jobs.append(overrides)
    return jobs


def launch_round(study, launcher, batch: List, jobs: List[List[str]], job_idx: int, metric: str) -> None:
    """Run the round's jobs and tell the study how each ended. A job that raised is failed with
    one line. When the launcher raises (Ctrl-C, a lost array task, a killed worker), its finished
    jobs count as they ended and the unfinished ones run again; only Ctrl-C stops the sweep."""
    from hydra.core.utils import JobStatus

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
            error = job._return_value
            say(f"trial {trial.number} failed: {type(error).__name__}: {first_line(error)}")
            runs.record_failure(run_dir, f"{type(error).__name__}: {first_line(error)}", list(job.overrides))
        settle(study, trial.number, run_dir, metric, "its job ended")


def run_trials(
    study, settings, launcher, space: SearchSpace, location, lock, width: int, direction: str, metric: str
) -> None:
    """Ask, launch and tell rounds of trials until the study holds hydra.sweeper.n_trials of them."""
    import optuna

    from mnist_cli.search import study as studies

    say(
        f"optuna study {study.study_name} ({direction} {metric}, {settings.pruner} pruner) in {studies.shown(location)}: "
        f"{studies.counted(study.get_trials(deepcopy=False))} of {settings.n_trials} trials done or running"
    )
    job_idx, rounds = 0, 0
    with studies.Heartbeat(study._storage) as heartbeat:
        while True:
            with runs.exclusive(lock):
                settle_abandoned(study, metric)
                batch = ask_round(study, settings, space, width)
            if not batch:
                if rounds == 0 and studies.counted(study.get_trials(deepcopy=False)) >= settings.n_trials:
                    say(
                        f"study {study.study_name} already has its {settings.n_trials} trials; raise hydra.sweeper.n_trials to run more"
                    )
                break
            rounds += 1
            heartbeat.trial_ids.update(dict.fromkeys(t._trial_id for t in batch))
            try:
                jobs = launchable(study, batch, space, location)
                launch_round(study, launcher, batch, jobs, job_idx, metric)
            finally:
                for trial in batch:
                    heartbeat.trial_ids.pop(trial._trial_id, None)
            job_idx += sum(
                overrides is not None for overrides in jobs
            )  # each job its own folder, even when the launcher failed
    running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    if running:
        say(f"{running} trials of study {study.study_name} are still running in other workers")


def sweep(settings, config: DictConfig, launcher, arguments: List[str]) -> None:
    """Run trials until the study has hydra.sweeper.n_trials of them (this process and any other
    working on the study together)."""
    try:
        import optuna  # noqa: F401 (is the extra installed?)
    except ImportError:
        refuse("hparams_search=optuna needs Optuna: pip install 'mnist-cli[optuna]'.")
    from mnist_cli.config.checks import check_config
    from mnist_cli.errors import UserError
    from mnist_cli.search import study as studies
    from mnist_cli.search.launchers import jobs_at_once

    metric = config.optimized_metric
    direction = _check(settings, metric)
    try:  # a mistake every trial would make is refused once, here
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        check_config(task, "train", list(arguments))
    except UserError as error:
        refuse(str(error))
    _check_sampler(settings)
    space = search_space(settings.params, arguments)
    _check_values(space)
    study, location, lock = open_study(settings, config, space, direction)
    width = settings.n_jobs or jobs_at_once(config.hydra.launcher)
    try:
        run_trials(study, settings, launcher, space, location, lock, width, direction, metric)
    except studies.damaged_storage_errors() as error:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
            sweep_dir.rmdir()
        refuse(damaged(location, error))
    try:
        write_results(Path(config.hydra.sweep.dir), study, location, settings, metric)
    except WriteFailed as error:  # the study itself is saved; only the summary file is missing
        print(f"mnist train: {error}", file=sys.stderr)
