"""The search space: Hydra's override grammar (choice, interval, tag(log, interval(...)), range) in
hydra.sweeper.params and on the command line, as Optuna distributions, and the overrides every
trial gets as they are. Each searched value is checked against the config before any trial runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig

from mnist_cli.config.hydra_refusals import composition_problem
from mnist_cli.search.settings import refuse


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


def check_values(space: SearchSpace) -> None:
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
