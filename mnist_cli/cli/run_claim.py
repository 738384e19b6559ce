"""The folder a run writes, claimed before Hydra writes into it: a named folder (hydra.run.dir=,
hydra.sweep.dir=) created, locked and refused unless empty; a resumed run continued in its own folder;
outputs_dir checked; a quiet torchrun rank sent to a scratch folder. And a run that failed to start
leaves no folder behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mnist_cli.cli.command_line import CommandLine
from mnist_cli.errors import UserError
from mnist_cli.training.distributed import this_process


def claimed(line: CommandLine) -> CommandLine:
    """Returns the command line with the overrides that send Hydra to the folder claimed for it; raises
    UserError, in one sentence, when that folder cannot be had."""
    if not line.runs_task:  # --cfg, --info, ...: Hydra writes nothing
        return line
    if line.command == "train":
        line = _claim_named_folder(_resume_in_place(line))
    if line.command in ("train", "predict"):
        _check_outputs_dir(line)
    if line.command == "train" and this_process().rank > 0:
        line = _quiet_rank(line)
    return line


def _resume_in_place(line: CommandLine) -> CommandLine:
    """With resume=<run>, lock that run's folder and make Hydra use it, leaving its .hydra/ as it was."""
    resume = line.given.get("resume")
    if resume in (None, "null"):
        return line
    from mnist_cli.config.compose import quoted_value
    from mnist_cli.runs.locks import lock_run
    from mnist_cli.runs.resume import run_folder

    if line.multirun:
        raise UserError("resume= continues one run; it cannot be part of a sweep (-m).")
    folder = run_folder(str(resume), str(line.given.get("outputs_dir", "outputs")))
    if this_process().is_main:
        lock_run(folder)  # before Hydra opens anything in it: a second process writes nothing
    return line.adding(f"hydra.run.dir={quoted_value(folder)}", "hydra.output_subdir=null")


def _claim_named_folder(line: CommandLine) -> CommandLine:
    """With hydra.run.dir= (hydra.sweep.dir= for -m) the user names the folder: resolve it as Hydra
    will (${outputs_dir}, ${now:...}), create and lock it, and refuse it unless it is empty, all
    before Hydra writes .hydra/ into it. Returns the command line with the resolved folder."""
    key = "hydra.sweep.dir" if line.multirun else "hydra.run.dir"
    if key not in line.keys or line.given.get("resume") not in (None, "null"):
        return line
    from omegaconf import OmegaConf

    from mnist_cli.config.compose import compose, quoted_value
    from mnist_cli.runs.folder import RunFolder
    from mnist_cli.runs.locks import lock_run

    try:
        folder = Path(str(OmegaConf.select(compose("train", line.composable, with_hydra=True), key)))
    except Exception:  # Hydra will say what is wrong with the command line
        return line
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{key}={folder} cannot be created ({error.strerror}); choose another folder.") from None
    if this_process().is_main:
        lock_run(folder)  # a second process naming the same folder is refused here, before it writes
        if any(p != RunFolder(folder).lock for p in folder.iterdir()):
            hint = "" if line.multirun else f", or continue it with resume={folder}"
            raise UserError(f"{key}={folder} is not empty; choose a new folder{hint}.")
    return line.adding(f"{key}={quoted_value(folder.resolve())}")


def _check_outputs_dir(line: CommandLine) -> None:
    """Fail early, in one sentence, when run folders cannot be created (Hydra would show a traceback)."""
    folder = Path(str(line.given.get("outputs_dir", "outputs")))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"outputs_dir={folder} cannot be created ({error.strerror}); choose another folder.") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"outputs_dir={folder} is not writable; choose another folder.")


def _quiet_rank(line: CommandLine) -> CommandLine:
    """Under torchrun, processes other than rank 0 write nothing: Hydra gets a throwaway folder."""
    scratch = tempfile.mkdtemp(prefix=f"mnist-cli-rank{this_process().rank}-")
    return line.adding(f"hydra.run.dir='{scratch}'", "hydra.output_subdir=null", "hydra/job_logging=none")


def discard_unless_resumed(command: str, cfg, runtime) -> None:
    """Remove the folder of a train or predict run that failed to start (never an existing run)."""
    from mnist_cli.runs.locks import discard_unstarted

    if command == "predict" or (command == "train" and cfg.get("resume") is None):
        discard_unstarted(runtime.runtime.output_dir)
