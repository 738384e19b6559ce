"""What an old run's stored config needs to resume today: the values of keys added since it started.

A run keeps the config it started with (.hydra/config.yaml); resume merges it over `defaults_for(it)`.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_cli.config.compose import compose
from mnist_cli.config.schema import GROUP_SCHEMAS

# Keys whose YAML value is not how a run from before the key existed ran: such a run continues
# without them (optimizer.fused absent: torch's default implementation, as it trained).
NOT_FILLED_ON_RESUME = ("optimizer.fused",)
# ... or with the value it ran with: before dataset.augment, model.augment meant 2-pixel shifts on every
# dataset (FashionMNIST's default is no shifts now). Written out rather than read from conf/dataset/mnist.yaml
# on purpose: this is history, and stays what those runs trained with when the YAML changes.
FILLED_AS_BEFORE = {
    "dataset.augment": {
        "shift": 2,
        "flip": False,
        "rotate": 0.0,
        "scale": 0.0,
        "erase": 0.0,
        "shear": 0.0,
        "stroke": 0.0,
    },
    "dataset.test_time_flip": False,
}


def defaults_for(stored: Dict[str, Any]) -> DictConfig:
    """Return today's train.yaml values for the group options `stored` (a run's saved config) chose,
    untyped: merged under `stored` they fill the keys added to mnist-cli since that run started.

    A group `stored` lacks stays ??? (its config was cut short: resume refuses it); a group option
    that no longer exists gets nothing; keys in NOT_FILLED_ON_RESUME are left out, and those in
    FILLED_AS_BEFORE get the value runs had before the key existed.
    """
    chosen = {}
    for group, options in GROUP_SCHEMAS.items():
        node = stored.get(group)
        if isinstance(node, dict) and node.get("name") in options:
            chosen[group] = node["name"]
    values = OmegaConf.to_container(compose("train", [f"{g}={c}" for g, c in chosen.items()]), resolve=False)
    for group in GROUP_SCHEMAS:
        if group not in chosen:
            values[group] = {} if group in stored else MISSING
    for key in NOT_FILLED_ON_RESUME:
        section, name = key.split(".")
        if isinstance(values[section], dict):
            values[section].pop(name, None)
    for key, before in FILLED_AS_BEFORE.items():
        section, name = key.split(".")
        if isinstance(values[section], dict):
            values[section][name] = copy.deepcopy(before)
    return OmegaConf.create(values)
