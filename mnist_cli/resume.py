"""`mnist train resume=<run folder | checkpoint | latest>`: continue a run in its own folder.

The run continues as it was configured (the config stored in its checkpoint); only keys that
do not change the experiment may be given again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf

from mnist_cli import runs
from mnist_cli.config import TrainConfig
from mnist_cli.errors import UserError

CHANGEABLE = ("epochs", "device", "precision", "data.root", "data.download", "threads", "eval_batch_size",
              "checkpoint.every_n_steps", "outputs_dir", "resume")  # fmt: skip


def run_folder(value: str, outputs_dir: str) -> Path:
    """The run folder that resume=<value> continues (its checkpoints/last.pt must exist)."""
    return runs.run_dir_of(runs.resolve_checkpoint(value, outputs_dir, key="resume", prefer=("last.pt",)))


def continue_run(cfg: DictConfig, overrides: List[str]) -> Tuple[DictConfig, Dict]:
    """The config to continue with and the checkpoint state (last.pt) to continue from."""
    from mnist_cli.checkpoints import read_checkpoint

    path = runs.resolve_checkpoint(cfg.resume, cfg.outputs_dir, key="resume", prefer=("last.pt",))
    state = read_checkpoint(path)
    if "step" not in state:
        raise UserError(f"{path} has no training state to continue from (written by an older mnist-cli).")
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    refused = [key for key in given if key not in CHANGEABLE and not key.startswith("hydra")]
    if refused:
        raise UserError(
            f"resume continues the run as it was configured, so {', '.join(refused)} cannot change; "
            f"with resume= you may give only {', '.join(CHANGEABLE[:-2])}."
        )
    # over today's defaults: a key added since the checkpoint was written gets its default
    # (precision: fp32); optimizer keys stay as stored (no `fused` there: torch's default)
    config = OmegaConf.merge(OmegaConf.to_container(OmegaConf.structured(TrainConfig)), state["config"])
    for key in given:
        if key in CHANGEABLE:
            OmegaConf.update(config, key, OmegaConf.select(cfg, key), merge=False)
    if config.epochs < state["epoch"] or (config.epochs == state["epoch"] and state["step"] == 0):
        raise UserError(f"the run already finished {state['epoch']} epochs; raise epochs= to train longer.")
    return config, state
