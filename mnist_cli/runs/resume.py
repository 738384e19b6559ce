"""`mnist train resume=<run folder | checkpoint | latest>`: continue a run in its own folder.

The run continues as it was configured (the config stored in its checkpoint, or Hydra's
.hydra/config.yaml for a run killed before its first checkpoint); only keys that do not change
the experiment may be given again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from mnist_cli.config.compatibility import defaults_for
from mnist_cli.errors import UserError
from mnist_cli.runs import folder as runs

CHANGEABLE = (
    "epochs",
    "device",
    "precision",
    "data.root",
    "data.download",
    "threads",
    "eval_batch_size",
    "checkpoint.every_n_steps",
    "outputs_dir",
    "resume",
)


@dataclass
class Continuation:
    """What a resumed run starts from."""

    config: DictConfig  # the run's own config, with the changeable keys given again applied
    state: Optional[Dict]  # checkpoints/last.pt; None: killed before its first checkpoint, start at step 0
    overrides: List[str]  # the command-line overrides the run was started with


def _never_checkpointed(folder: Path) -> bool:
    return (
        folder.is_dir()
        and not (folder / "checkpoints" / "last.pt").is_file()
        and (folder / ".hydra" / "config.yaml").is_file()
    )


def _named(value: str, outputs_dir: str) -> Path:
    """The path resume=<value> names (the run `latest` points to). A file must be a run's own
    checkpoints/last.pt: continuing from best.pt, or from a copy elsewhere, would overwrite a run
    folder with another history."""
    if value == "latest":
        link = Path(outputs_dir) / "train" / "latest"
        return link.resolve() if link.exists() else link
    path = Path(value).expanduser()
    if path.is_file() and not (path.name == "last.pt" and path.parent.name == "checkpoints"):
        raise UserError(
            f"resume= continues a run from its own checkpoints/last.pt, and {value} is not one; "
            "give the run folder (or latest)."
        )
    return path


def run_folder(value: str, outputs_dir: str) -> Path:
    """The run folder that resume=<value> continues: one with checkpoints/last.pt, or one killed
    before its first checkpoint (it has Hydra's .hydra/config.yaml)."""
    named = _named(value, outputs_dir)
    if _never_checkpointed(named):
        return named.resolve()
    return runs.run_dir_of(runs.resolve_checkpoint(value, outputs_dir, key="resume", prefer=("last.pt",)))


def _original_overrides(folder: Path, state: Optional[Dict]) -> List[str]:
    if state is not None and "overrides" in state:
        return list(state["overrides"])
    path = folder / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:  # missing or unreadable: the summary just lists none
        return []


def continue_run(cfg: DictConfig, overrides: List[str]) -> Continuation:
    """The config, state and original overrides to continue the run resume= names."""
    from mnist_cli.runs.checkpoints import read_resumable

    named = _named(cfg.resume, cfg.outputs_dir)
    if _never_checkpointed(named):
        folder, state = named.resolve(), None
        try:
            stored = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml"))
        except Exception:
            raise UserError(
                f"{folder / '.hydra' / 'config.yaml'} is not readable YAML; the run cannot be resumed."
            ) from None
    else:
        path = runs.resolve_checkpoint(cfg.resume, cfg.outputs_dir, key="resume", prefer=("last.pt",))
        folder, state = runs.run_dir_of(path), read_resumable(path)
        stored = state["config"]
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    refused = [key for key in given if key not in CHANGEABLE and not key.startswith("hydra")]
    if refused:
        raise UserError(
            f"resume continues the run as it was configured, so {', '.join(refused)} cannot change; "
            f"with resume= you may give only {', '.join(CHANGEABLE[:-2])}."
        )
    # over the YAML defaults of the run's own options: a key added since the run started gets its
    # default (precision: fp32), except optimizer.fused (absent: torch's default, as the run trained)
    config = OmegaConf.merge(defaults_for(stored), stored)
    for key in given:
        if key in CHANGEABLE:
            OmegaConf.update(config, key, OmegaConf.select(cfg, key), merge=False)
    config.resume = None
    if OmegaConf.missing_keys(config):  # .hydra/config.yaml cut short: Hydra does not write it atomically
        raise UserError(
            f"{folder / '.hydra' / 'config.yaml'} is incomplete (the run was stopped while it was written); "
            "start the run again instead of resuming it."
        )
    if state is not None and config.get("ema_decay") is not None and not isinstance(state.get("ema"), dict):
        raise UserError(
            f"{path} has no moving average of the weights although its config has ema_decay={config.ema_decay}; "
            "it cannot be continued exactly (start the run again)."
        )
    if state is not None and (
        config.epochs < state["epoch"] or (config.epochs == state["epoch"] and state["step"] == 0)
    ):
        raise UserError(f"the run already finished {state['epoch']} epochs; raise epochs= to train longer.")
    return Continuation(config, state, _original_overrides(folder, state))
