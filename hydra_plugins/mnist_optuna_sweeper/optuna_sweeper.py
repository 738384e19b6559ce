"""The Hydra side of mnist-cli's Optuna sweeper: its settings (hydra.sweeper.*) and the Sweeper class
Hydra instantiates. The search itself is mnist_cli/search/sweep.py; nothing here imports optuna, so Hydra's
plugin scan stays fast and works without the extra.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class MnistOptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_optuna_sweeper.optuna_sweeper.MnistOptunaSweeper"
    _recursive_: bool = False  # the sampler stays a config: each trial makes its own (see sampler)
    # any Optuna sampler; with a seed, each ask is seeded seed + the number of trials the study holds
    # (workers on one study differ); a sampler without constant_liar: ~hydra.sweeper.sampler.constant_liar
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None, "constant_liar": True}
    )
    direction: Optional[str] = None  # null: optimized_metric's own (minimize a loss or seconds, maximize an accuracy)
    # null: sqlite:///<outputs_dir>/optuna/<study_name>.db; else a database URL or a journal file's path
    # (a relative file is made absolute; an in-memory database is refused: the jobs could not reach it)
    storage: Optional[str] = None
    study_name: Optional[str] = None  # null: mnist-<hash of the overrides>: the same command, the same study
    n_trials: int = 20  # the study's total: running the command again continues it up to this
    n_jobs: Optional[int] = None  # trials asked at once; null: as many as the launcher runs at once
    pruner: str = "median"  # median | hyperband | none
    warmup_epochs: int = 1  # median: a trial's first N epochs are never pruned
    startup_trials: int = 5  # median: no pruning until N trials have completed (pruned ones do not count)
    params: Optional[Dict[str, str]] = None  # key: a sweep in Hydra's grammar, e.g. tag(log, interval(1e-4, 1e-2))


ConfigStore.instance().store(
    group="hydra/sweeper", name="mnist_optuna", node=MnistOptunaSweeperConf, provider="mnist-cli"
)


class MnistOptunaSweeper(Sweeper):
    """Hydra's side of the search: keeps the settings, the config and the launcher; mnist_cli.search.sweep runs it."""

    def __init__(self, **settings: Any) -> None:
        self.settings = DictConfig(settings)
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> None:
        from mnist_cli.search.sweep import sweep

        sweep(self.settings, self.config, self.launcher, arguments)
