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
import logging
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from mnist_cli import leaderboard, runs
from mnist_cli.errors import WriteFailed
from mnist_cli.study_trial import ENV_STORAGE, ENV_STUDY, ENV_TRIAL

say = logging.getLogger(__name__).info  # the sweep's own lines, as Hydra's launchers write theirs



def refuse(sentence: str) -> None:
    """A mistake in the sweep's settings: one sentence, exit 2, before any trial runs."""
    print(f"mnist train: {sentence}", file=sys.stderr)
    raise SystemExit(2)


@dataclass
class SearchSpace:
    distributions: Dict  # searched key -> optuna distribution
    fixed: List[str]  # the other overrides, as written; every trial gets them
    setup: List[str]  # both, as text: what makes two sweeps the same study


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
    setup = sorted(fixed + [f"{k}={v}" for k, v in distributions.items()])
    return SearchSpace(distributions, fixed, setup)


def study_name(given: Optional[str], space: SearchSpace) -> str:
    """The given name, else one made from the setup: the same command continues the same study,
    another command starts its own."""
    if given:
        return given
    return "mnist-" + hashlib.sha1(json.dumps(space.setup).encode()).hexdigest()[:8]


def launcher_width(config: DictConfig) -> int:
    """How many jobs the launcher runs at once: joblib's n_jobs, submitit's array_parallelism, else 1."""
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs", -1) or 1
        return (os.cpu_count() or 1) if n_jobs < 0 else n_jobs
    if "submitit" in target:
        return int(launcher.get("array_parallelism", 1) or 1)
    return 1


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_overrides(space: SearchSpace, location: str, name: str, trial) -> List[str]:
    """A trial's job: the fixed overrides, the trial's parameters, and where its study is (for pruning)."""
    return [*space.fixed, *(f"{k}={v}" for k, v in trial.params.items()),
            f"++hydra.job.env_set.{ENV_STORAGE}={_quoted(location)}", f"++hydra.job.env_set.{ENV_STUDY}={_quoted(name)}",
            f"++hydra.job.env_set.{ENV_TRIAL}={trial._trial_id}"]  # fmt: skip


def _check(settings) -> None:
    if settings.n_trials is None or settings.n_trials < 1:
        refuse(f"hydra.sweeper.n_trials must be a positive whole number, not {settings.n_trials}.")
    from mnist_cli.study import PRUNERS

    if settings.pruner not in PRUNERS:
        refuse(f"hydra.sweeper.pruner must be one of {', '.join(PRUNERS)}, not {settings.pruner}.")
    if settings.warmup_epochs < 0 or settings.startup_trials < 0:
        refuse("hydra.sweeper.warmup_epochs and hydra.sweeper.startup_trials must be 0 or more.")
    if settings.n_jobs is not None and settings.n_jobs < 1:
        refuse(f"hydra.sweeper.n_jobs must be a positive whole number or null, not {settings.n_jobs}.")
    if settings.direction not in ("minimize", "maximize"):
        refuse(f"hydra.sweeper.direction must be minimize or maximize, not {settings.direction}.")


def _outcome(run_dir: Path, metric: str):
    """(status of the job's run folder, its value of `metric` or None)."""
    if not run_dir.is_dir():
        return "unfinished", None
    record = leaderboard.run_record(run_dir)
    return record["status"], record[leaderboard.sort_metric(metric).column]


def settle(study, number: int, run_dir: Optional[Path], metric: str, why: str) -> str:
    """Tell the study how trial `number` ended, read from its job's run folder; returns the status.
    A job stopped before the end (killed, Ctrl-C, never started) is not judged: its parameters
    run again."""
    from optuna.trial import TrialState

    from mnist_cli.study import RUN, stop_trial

    status, value = _outcome(run_dir, metric) if run_dir is not None else ("unfinished", None)
    trial = study.get_trials(deepcopy=False)[number]
    if run_dir is not None and RUN not in trial.user_attrs and trial.state == TrialState.RUNNING:  # a job that failed early
        study._storage.set_trial_user_attr(trial._trial_id, RUN, str(run_dir))
    if status in ("completed", "early_stopped") and value is not None:
        study.tell(number, value, skip_if_finished=True)
    elif status == "pruned":
        study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
    elif status in ("interrupted", "unfinished"):
        stop_trial(study, number, f"{why}; its job was {status}")
    else:  # failed, diverged, damaged, or no value of the metric
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return status


def settle_abandoned(study, metric: str) -> None:
    """Settle the running trials whose worker is gone: a job that finished counts as it ended."""
    from mnist_cli.study import RUN, WORKER, abandoned

    for trial in abandoned(study):
        run = trial.user_attrs.get(RUN)
        status = settle(study, trial.number, Path(run) if run else None, metric, f"its worker ({trial.user_attrs.get(WORKER)}) stopped")
        say(f"trial {trial.number} lost its worker ({status}{'; it runs again' if status in ('interrupted', 'unfinished') else ''})")


def best_trial(study, metric: str):
    """The complete trial ranked first by the leaderboard's rule (ties: the first run folder), or None."""
    from optuna.trial import TrialState

    from mnist_cli.study import RUN

    complete = {t.user_attrs.get(RUN): t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    records = [leaderboard.run_record(Path(run)) for run in sorted(r for r in complete if r and Path(r).is_dir())]
    ranked = leaderboard.rank(records, metric)
    return complete[str(Path(ranked[0]["run"]))] if ranked else None


def write_results(sweep_dir: Path, study, location: str, settings, metric: str) -> None:
    """optimization_results.yaml in the sweep folder: the study, its trials by state, the best trial."""
    from optuna.trial import TrialState

    from mnist_cli.study import RUN

    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    best = best_trial(study, metric)
    results = {"name": "optuna", "study": study.study_name, "storage": location, "optimized_metric": metric,
               "direction": settings.direction, "n_trials": settings.n_trials, "trials": states}  # fmt: skip
    if best is not None:
        results.update(best_trial=best.number, best_value=best.value, best_params=best.params, best_run=best.user_attrs[RUN])
    text = OmegaConf.to_yaml(OmegaConf.create(results))
    sweep_dir.mkdir(parents=True, exist_ok=True)  # no trial ran here when the study was already complete
    runs.atomic_write(sweep_dir / "optimization_results.yaml", lambda f: f.write(text.encode()))
    if best is None:
        say(f"optuna study {study.study_name}: no trial completed yet")
    else:
        say(f"optuna study {study.study_name}: best trial {best.number}, {metric} {best.value:.4g}, "
            f"{' '.join(f'{k}={v}' for k, v in best.params.items())}; run folder: {best.user_attrs[RUN]}")  # fmt: skip


def sweep(settings, config: DictConfig, launcher, arguments: List[str]) -> None:
    """Run trials until the study has hydra.sweeper.n_trials of them (this process and any other
    working on the study together)."""
    try:
        import optuna
    except ImportError:
        refuse("hparams_search=optuna needs Optuna: pip install 'mnist-cli[optuna]'.")
    from hydra.utils import instantiate

    from mnist_cli import study as studies
    from mnist_cli.config import check_config
    from mnist_cli.errors import UserError

    _check(settings)
    metric = config.optimized_metric
    try:  # a mistake every trial would make is refused once, here
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        check_config(task, "train", list(arguments))
    except UserError as error:
        refuse(str(error))
    try:
        instantiate(settings.sampler)
    except Exception as error:
        refuse(f"hydra.sweeper.sampler cannot be made ({str(error).strip().splitlines()[0]}).")
    space = search_space(settings.params, arguments)
    name = study_name(settings.study_name, space)
    location = settings.storage or studies.default_location(config.outputs_dir, name)
    lock = studies.lock_path(location)
    pruner = studies.make_pruner(settings.pruner, settings.warmup_epochs, settings.startup_trials)
    try:
        with studies.exclusive(lock):  # two workers starting at once would both create the tables
            storage = studies.open_storage(location)
            study = optuna.create_study(study_name=name, storage=storage, direction=settings.direction, pruner=pruner,
                                        load_if_exists=True)  # fmt: skip
            made_with = study.user_attrs.get(studies.SETUP)
            if made_with is None:
                study.set_user_attr(studies.SETUP, space.setup)
    except Exception as error:  # a bad URL, an unreachable server, an unwritable folder
        refuse(f"the Optuna storage {location} cannot be opened ({str(error).strip().splitlines()[0]}).")
    if made_with is not None and made_with != space.setup:
        differ = sorted(set(space.setup) ^ set(made_with))
        refuse(f"study {name} in {location} was made with other settings ({', '.join(differ)} differ); "
               "give the same overrides, or another hydra.sweeper.study_name.")  # fmt: skip
    if made_with is not None and study.direction.name.lower() != settings.direction:
        refuse(f"study {name} {study.direction.name.lower()}s its value, and this command would {settings.direction} it; "
               "give another hydra.sweeper.study_name.")  # fmt: skip

    width = settings.n_jobs or launcher_width(config)
    seed = settings.sampler.get("seed")
    say(f"optuna study {name} ({settings.direction} {metric}, {settings.pruner} pruner) in {location}: "
        f"{studies.counted(study.get_trials(deepcopy=False))} of {settings.n_trials} trials done or running")  # fmt: skip
    job_idx = 0
    with studies.Heartbeat(storage) as heartbeat:
        while True:
            with studies.exclusive(lock):
                settle_abandoned(study, metric)
                trials = study.get_trials(deepcopy=False)
                todo = settings.n_trials - studies.counted(trials)
                if todo <= 0:
                    if job_idx == 0:
                        say(f"study {name} already has its {settings.n_trials} trials; raise hydra.sweeper.n_trials to run more")
                    break
                batch = []
                for _ in range(min(width, todo)):
                    number = len(study.get_trials(deepcopy=False))
                    # seeded per trial number: workers on one study do not draw the same points
                    study.sampler = instantiate(settings.sampler, seed=None if seed is None else seed + number)
                    trial = study.ask(space.distributions)
                    studies.claim(study, trial)
                    batch.append(trial)
            heartbeat.trial_ids.update(dict.fromkeys(t._trial_id for t in batch))
            try:
                returns = launcher.launch([job_overrides(space, location, name, t) for t in batch], initial_job_idx=job_idx)
            except BaseException:  # Ctrl-C, a killed launcher worker: these trials run again later
                for trial in batch:
                    studies.stop_trial(study, trial.number, "its sweep was stopped")
                raise
            finally:
                for trial in batch:
                    heartbeat.trial_ids.pop(trial._trial_id, None)
            job_idx += len(returns)
            for trial, job in zip(batch, returns):
                settle(study, trial.number, Path(job.hydra_cfg.hydra.runtime.output_dir), metric, "its job ended")
    running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    if running:
        say(f"{running} trials of study {name} are still running in other workers")
    try:
        write_results(Path(config.hydra.sweep.dir), study, location, settings, metric)
    except WriteFailed as error:  # the study itself is saved; only the summary file is missing
        print(f"mnist train: {error}", file=sys.stderr)
