"""The ${name:} resolvers the YAML files under conf/ call, and the functions behind them.

Imports only omegaconf, never torch: `mnist train --help` resolves ${mnist_config_groups:}.
"""

from __future__ import annotations

import importlib.resources
import os
import time

from omegaconf import OmegaConf

from mnist_cli.paths import default_data_root

RUN_NAME_ENV = "MNIST_CLI_RUN_NAME"


def run_name() -> str:
    """`<YYYY-MM-DD>/<HH-MM-SS>-<random id>`, fixed for the whole process and its children.

    Hydra resolves the run/sweep folder more than once, and the joblib launcher resolves it again
    in each worker process; keeping the first value in the environment makes it one folder.
    """
    if RUN_NAME_ENV not in os.environ:
        os.environ[RUN_NAME_ENV] = time.strftime("%Y-%m-%d/%H-%M-%S-") + os.urandom(3).hex()
    return os.environ[RUN_NAME_ENV]


def config_groups_text() -> str:
    """One line per config group with its options, read from the YAML files (for --help)."""
    conf = importlib.resources.files("mnist_cli.conf")
    lines = []
    for group in sorted(p.name for p in conf.iterdir() if p.is_dir() and not p.name.startswith("_")):
        options = sorted(f.name[: -len(".yaml")] for f in conf.joinpath(group).iterdir() if f.name.endswith(".yaml"))
        if options:  # conf/hydra/ holds only launcher presets, listed in the footer
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


RESOLVERS = {
    "mnist_data_root": default_data_root,
    "mnist_config_groups": config_groups_text,
    "run_name": run_name,
}


def register_resolvers() -> None:
    """Register the ${...} resolvers the YAML files use; safe to call twice."""
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
