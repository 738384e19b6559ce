"""How a run starts: fresh, or resumed in its own folder (`mnist train resume=<run folder | checkpoint | latest>`).

Both are one value, RunStart, that `train` reads. A resumed run continues as it was configured (the
config stored in its checkpoint, or Hydra's .hydra/config.yaml for a run killed before its first
checkpoint); only keys that do not change the experiment may be given again. One function,
run_folder, finds its folder: before Hydra starts (to lock it and run the job in it) and in start_of
(under torchrun the other processes run Hydra in a scratch folder, yet read the run's checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from mnist_cli.config.compatibility import defaults_for
from mnist_cli.errors import UserError
from mnist_cli.runs.folder import (
    CHECKPOINTS,
    LAST,
    RunFolder,
    hydra_overrides,
    latest_link,
    resolve_checkpoint,
    run_dir_of,
)

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


@dataclass(frozen=True)
class RunStart:
    """How a run starts, fresh or resumed: everything `train` needs besides the run folder."""

    config: DictConfig  # the config the run trains with (a resumed run's own, with the changeable keys applied)
    overrides: List[str]  # the command-line overrides the run was made with (summary.json's "overrides")
    checkpoint: Optional[Dict[str, Any]] = None  # last.pt to continue from; None: start at step 0
    resumes: Tuple[Tuple[str, ...], ...] = ()  # every resume's overrides in order, this one last; (): fresh

    @property
    def resumed(self) -> bool:
        """Whether the run continues in a folder it wrote before (from last.pt, or from step 0)."""
        return bool(self.resumes)

    @property
    def resumed_with(self) -> List[str]:
        """The overrides given with this resume= (summary.json's resumed_with); [] for a fresh run."""
        return list(self.resumes[-1]) if self.resumes else []


def start_of(cfg: DictConfig, overrides: List[str]) -> RunStart:
    """How the run Hydra composed `cfg` for (with `overrides` on its command line) starts: fresh, or,
    with resume=, continuing the run in the folder run_folder finds."""
    if cfg.resume is None:
        return RunStart(cfg, list(overrides))
    return _resumed(cfg, RunFolder(run_folder(cfg.resume, cfg.outputs_dir)), list(overrides))


def _never_checkpointed(folder: Path) -> bool:
    run = RunFolder(folder)
    return folder.is_dir() and not run.last.is_file() and run.hydra_config.is_file()


def _named(value: str, outputs_dir: str) -> Path:
    """The path resume=<value> names (the run `latest` points to). A file must be a run's own
    checkpoints/last.pt: continuing from best.pt, or from a copy elsewhere, would overwrite a run
    folder with another history."""
    if value == "latest":
        link = latest_link(outputs_dir)
        return link.resolve() if link.exists() else link
    path = Path(value).expanduser()
    if path.is_file() and not (path.name == LAST and path.parent.name == CHECKPOINTS):
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
    return run_dir_of(resolve_checkpoint(value, outputs_dir, key="resume", prefer=(LAST,)))


def _as_named(value: str, run: RunFolder) -> Path:
    """`run`'s last.pt spelled as resume=<value> named it, for messages."""
    if value == "latest":
        return run.last
    path = Path(value).expanduser()
    return path if path.is_file() else RunFolder(path).last


def _stored_config(run: RunFolder) -> Dict[str, Any]:
    """.hydra/config.yaml of a run killed before its first checkpoint."""
    try:
        return OmegaConf.to_container(OmegaConf.load(run.hydra_config))
    except Exception:
        raise UserError(f"{run.hydra_config} is not readable YAML; the run cannot be resumed.") from None


def _refuse_changes(overrides: List[str]) -> List[str]:
    """The keys `overrides` give; raises UserError when one of them would change the experiment."""
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    refused = [key for key in given if key not in CHANGEABLE and not key.startswith("hydra")]
    if refused:
        raise UserError(
            f"resume continues the run as it was configured, so {', '.join(refused)} cannot change; "
            f"with resume= you may give only {', '.join(CHANGEABLE[:-2])}."
        )
    return given


def _resumed(cfg: DictConfig, run: RunFolder, overrides: List[str]) -> RunStart:
    """The start of the run in `run` continued: its config, last.pt (None: killed before its first
    checkpoint) and original overrides; raises UserError when it cannot continue as it was."""
    from mnist_cli.runs.checkpoints import read_resumable

    path = _as_named(cfg.resume, run)
    state = read_resumable(path) if run.last.is_file() else None
    stored = _stored_config(run) if state is None else state["config"]
    given = _refuse_changes(overrides)
    # over the YAML defaults of the run's own options: a key added since the run started gets its
    # default (precision: fp32), except optimizer.fused (absent: torch's default, as the run trained)
    config = OmegaConf.merge(defaults_for(stored), stored)
    for key in given:
        if key in CHANGEABLE:
            OmegaConf.update(config, key, OmegaConf.select(cfg, key), merge=False)
    config.resume = None
    if OmegaConf.missing_keys(config):  # .hydra/config.yaml cut short: Hydra does not write it atomically
        raise UserError(
            f"{run.hydra_config} is incomplete (the run was stopped while it was written); "
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
    original = list(state["overrides"]) if state is not None else hydra_overrides(run)
    return RunStart(config, original, state, (*_earlier_resumes(run), tuple(overrides)))


def _earlier_resumes(run: RunFolder) -> Tuple[Tuple[str, ...], ...]:
    """The overrides of each earlier resume of `run`, from its summary.json (`resumes`, or one `resumed_with`
    from before that key); () when there is none or it cannot be read: a report then sees this resume alone."""
    try:
        summary = json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return ()
    if not isinstance(summary, dict):
        return ()
    resumes = summary.get("resumes", [summary["resumed_with"]] if "resumed_with" in summary else [])
    if not isinstance(resumes, list) or not all(
        isinstance(r, list) and all(isinstance(w, str) for w in r) for r in resumes
    ):
        return ()
    return tuple(tuple(r) for r in resumes)
