"""The one step that edits a command's config after Hydra composed it, before it is checked and used."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_cli.paths import absolute_path

PATH_KEYS = ("outputs_dir", "data.root", "dataset.path", "resume", "run", "output")


def settle(cfg: DictConfig, runtime, command: str) -> None:
    """Set, in place, what only the running job knows (returns nothing):
    - with hydra.job.chdir=true, the paths the user gave (PATH_KEYS, inputs) made absolute from where the
      command was typed, since the job runs inside its run folder;
    - data.root and an image folder's dataset.path absolute: a run stores them, and eval/predict run from another folder read the same data;
    - train's `threads`, when null and the launcher runs N jobs at once on this machine: cores / N;
    - train's MLflow experiment, when null in a sweep: one shared by the sweep's jobs."""
    cwd = runtime.runtime.cwd
    if runtime.job.chdir:
        _absolute_paths(cfg, cwd)
    if cfg.get("data", {}).get("root"):
        cfg.data.root = absolute_path(cfg.data.root, cwd)
    folder = OmegaConf.select(cfg, "dataset.path", default=None) if command == "train" else None
    if folder:  # not given (???) selects as None
        cfg.dataset.path = absolute_path(folder, cwd)
    if command == "train":
        _share_the_machine(cfg, runtime)
        _sweep_experiment(cfg, runtime)


def _absolute_paths(cfg: DictConfig, cwd: str) -> None:
    def absolute(value):
        return (
            value if value in (None, "latest") or os.path.isabs(os.path.expanduser(value)) else os.path.join(cwd, value)
        )

    with open_dict(cfg):
        for key in PATH_KEYS:
            if OmegaConf.select(cfg, key, default=None) is not None:
                OmegaConf.update(cfg, key, absolute(str(OmegaConf.select(cfg, key))), merge=False)
        if "inputs" in cfg:
            cfg.inputs = [absolute(str(item)) for item in cfg.inputs]


def _share_the_machine(cfg: DictConfig, runtime) -> None:
    from mnist_cli.search import launchers

    jobs = launchers.jobs_at_once(runtime.launcher) if launchers.on_this_machine(runtime.launcher) else 1
    if cfg.threads is None and jobs > 1:  # N jobs on N cores: no oversubscription
        cfg.threads = max(1, (os.cpu_count() or 1) // jobs)


def _sweep_experiment(cfg: DictConfig, runtime) -> None:
    if cfg.logger.mlflow is None or cfg.logger.mlflow.experiment is not None or runtime.mode.name != "MULTIRUN":
        return
    from mnist_cli.training.loggers import default_experiment

    sweep, usual = Path(runtime.sweep.dir), Path(cfg.outputs_dir) / "multirun"
    cfg.logger.mlflow.experiment = default_experiment(
        cfg.dataset.name, str(sweep.relative_to(usual) if sweep.is_relative_to(usual) else sweep)
    )
