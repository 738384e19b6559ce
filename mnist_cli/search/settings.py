"""hydra.sweeper.* checked before any trial runs, and the sampler they describe.

A mistake here is one sentence and exit 2 (refuse), the same for every module of the search.
"""

from __future__ import annotations

import sys

from mnist_cli.errors import first_line
from mnist_cli.runs.metrics import optimization_direction


def refuse(sentence: str) -> None:
    """A mistake in the sweep's settings: one sentence, exit 2, before any trial runs."""
    print(f"mnist train: {sentence}", file=sys.stderr)
    raise SystemExit(2)


def check_settings(settings, metric: str) -> str:
    """Refuse settings no trial could run with; returns the direction: `metric`'s own."""
    if settings.n_trials is None or settings.n_trials < 1:
        refuse(f"hydra.sweeper.n_trials must be a positive whole number, not {settings.n_trials}.")
    from mnist_cli.search.study import PRUNERS  # imports optuna: after the checks that need none

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


def check_sampler(settings) -> None:
    """Refuse a sampler that cannot be made (an unknown class, an argument it does not take)."""
    try:
        make_sampler(settings, 0)
    except Exception as error:
        hint = (
            "; a sampler without constant_liar needs ~hydra.sweeper.sampler.constant_liar"
            if "constant_liar" in str(error)
            else ""
        )
        refuse(f"hydra.sweeper.sampler cannot be made ({first_line(error)}){hint}.")
