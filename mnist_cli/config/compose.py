"""Composing conf/<command>.yaml with overrides, outside a running `mnist` command or inside one.

Imports only hydra/omegaconf, never torch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from omegaconf import DictConfig

from mnist_cli.config.schema import register_configs


@contextmanager
def _hydra() -> Iterator[None]:
    """Hydra ready to compose conf/: the running app's (resume runs inside it), else our own."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside `mnist train`: its search path is mnist_cli.conf
        yield
        return
    register_configs()
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
        yield


def compose(command: str, overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """Return conf/<command>.yaml composed with `overrides`, as `mnist <command> --cfg job` shows it
    (with_hydra: with the `hydra` node too, as `--cfg all` shows it)."""
    from hydra import compose as hydra_compose

    with _hydra():
        return hydra_compose(config_name=command, overrides=list(overrides), return_hydra_config=with_hydra)


def quoted_value(value) -> str:
    """Return `value` as a quoted Hydra override value (a quote inside it escaped): key='a path with spaces'."""
    return "'" + str(value).replace("'", "\\'") + "'"
