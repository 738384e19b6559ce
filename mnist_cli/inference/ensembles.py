"""Ensembles of runs: `run=[A,B,C]`, or `run=<sweep folder> top=K` (its best K runs as the leaderboard
ranks them), for eval, predict, serve and export.

An ensemble averages its members' class probabilities. Each member keeps its own normalisation,
test-time flip and temperature, inside one torch module (EnsembleModel) that takes images in 0..1 and
returns the log of the mean probabilities: logits whose softmax is that mean, so everything that runs
one model runs an ensemble, and an export is one file holding every member. Members must share the
dataset, its classes and how image files are prepared; anything else is refused in one sentence.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from mnist_cli.errors import UserError
from mnist_cli.runs import leaderboard
from mnist_cli.runs.atomic import write_json
from mnist_cli.runs.checkpoints import Trained, load_trained
from mnist_cli.runs.run_records import find_runs
from mnist_cli.training.forward import autocast

RANKED_BY = "best_val_accuracy"  # what `mnist report` ranks by unless told otherwise
# What members must share: the data they were trained and are evaluated on, and how image files become inputs.
# The split keys too: with another validation split, one member's validation images are another's training images.
SHARED = (
    "dataset.name",
    "dataset.folder",
    "dataset.path",
    "dataset.split",
    "dataset.test_part",
    "dataset.prepare",
    "dataset.val_fraction",
    "dataset.test_fraction",
    "data.val_size",
    "data.split_seed",
    "data.limit",
)


class EnsembleModel(torch.nn.Module):
    """Members' mean class probabilities, as log-probabilities, for images in 0..1 (N, 1, 28, 28)."""

    def __init__(self, members: Sequence[Trained]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(m.model for m in members)
        self.register_buffer("means", torch.tensor([m.mean for m in members]))
        self.register_buffer("stds", torch.tensor([m.std for m in members]))
        self.register_buffer("temperatures", torch.tensor([m.temperature for m in members]))
        self.precisions = [m.config.get("precision", "fp32") for m in members]
        self.exporting = False  # an export computes in float32 throughout, as single exports do

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = []
        for i, model in enumerate(self.members):
            with autocast(images.device, "fp32" if self.exporting else self.precisions[i]):  # as each member trained
                logits.append(model((images - self.means[i]) / self.stds[i]).float() / self.temperatures[i])
        return combined(logits)


def combined(member_logits: List[torch.Tensor]) -> torch.Tensor:
    """The ensemble's logits from its members' (temperature applied): the log of their mean probabilities."""
    total = member_logits[0].softmax(1)
    for logits in member_logits[1:]:
        total = total + logits.softmax(1)
    return (total / len(member_logits)).clamp_min(1e-30).log()


def member_paths(run, top) -> List[str]:
    """The runs `run` names: itself, each entry of a list, or the best `top` runs below a sweep folder."""
    if isinstance(run, (list, ListConfig)):
        if top is not None:
            raise UserError("top= picks the best runs of a sweep folder; with run=[A,B,...] list the runs you want.")
        runs = [str(r) for r in run]
        if not runs:
            raise UserError("run=[] names no run; give one run, a list of runs, or a sweep folder with top=K.")
        if len(set(runs)) < len(runs):
            raise UserError("run= names one run twice; an ensemble averages different runs.")
        return runs
    if top is None:
        return [str(run)]
    folder = Path(str(run)).expanduser()
    if not folder.is_dir():
        raise UserError(f"run={run} with top={top}: give the sweep folder whose best {top} runs make the ensemble.")
    return best_runs(folder, top)


def best_runs(folder: Path, top: int, ranked_by: str = RANKED_BY, asked_as: str = "top") -> List[str]:
    """The best `top` completed runs below `folder`, as the leaderboard ranks them by `ranked_by`;
    `asked_as` names the key the user gave the number with."""
    records = leaderboard.rank([leaderboard.run_record(p) for p in find_runs(folder)], ranked_by)
    finished = [r for r in records if r["status"] == "completed"]
    if len(finished) < top:
        raise UserError(f"{folder} holds {len(finished)} completed runs, fewer than {asked_as}={top}.")
    return [r["run"] for r in finished[:top]]


def _refuse_mismatch(members: List[Trained], names: List[str]) -> None:
    first = members[0]
    for member, name in zip(members[1:], names[1:]):
        for key in SHARED:
            ours, theirs = OmegaConf.select(first.config, key), OmegaConf.select(member.config, key)
            if ours != theirs:
                raise UserError(
                    f"{name} has {key}={theirs} but {names[0]} has {key}={ours}; an ensemble's members must share "
                    "their dataset, classes and input preparation."
                )
        if member.classes != first.classes:
            raise UserError(
                f"{name} and {names[0]} have different classes; an ensemble's members must share their classes."
            )


def load_model(cfg: DictConfig, device: torch.device) -> Trained:
    """The model cfg.run names: one run as load_trained gives it, or an ensemble of several as one Trained
    (mean 0 and std 1: EnsembleModel normalises for each member; `members` lists them)."""
    names = member_paths(cfg.run, cfg.get("top"))
    members = [load_trained(name, cfg.outputs_dir, device) for name in names]
    if len(members) == 1:
        return members[0]
    _refuse_mismatch(members, names)
    first = members[0]
    config = OmegaConf.merge(first.config, {"precision": "fp32"})  # EnsembleModel applies each member's own
    model = EnsembleModel(members).to(device).eval()
    return replace(first, model=model, config=config, mean=0.0, std=1.0, temperature=1.0, members=members)


def ensemble_folder(outputs_dir: str) -> Path:
    """Where a command writes what belongs to an ensemble rather than to one run (eval's report, an export):
    <outputs_dir>/ensembles/<date>/<time>-<id>/, holding members.json."""
    from mnist_cli.config.resolvers import run_name

    return Path(outputs_dir) / "ensembles" / run_name()


def write_members(folder: Path, trained: Trained) -> None:
    """members.json in `folder`: each member's run folder and checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        folder / "members.json",
        [{"run": str(m.run_dir), "checkpoint": str(m.checkpoint_path.resolve())} for m in trained.members],
    )


def describe(trained: Trained) -> str:
    """How a command names what it runs: the checkpoint, or the ensemble's size."""
    if not trained.members:
        return str(trained.checkpoint_path)
    return f"an ensemble of {len(trained.members)} runs"


def config_for(runs: List[str], split: str) -> DictConfig:
    """The eval config load_model and load_split need for `runs` (one run or an ensemble) on `split`, for
    callers outside a command: report's ensemble row, the benchmarks."""
    return OmegaConf.create(
        {
            "run": runs if len(runs) > 1 else runs[0],
            "top": None,
            "outputs_dir": "outputs",
            "split": split,
            "data": {"root": None, "download": False},
        }
    )


def leaderboard_row(folder: Path, top: int, ranked_by: str) -> dict:
    """A leaderboard record for the ensemble of the best `top` runs below `folder`: its accuracy and loss on
    the members' shared validation split as best_val_accuracy / best_val_loss (the members' best
    checkpoints), the other columns empty; run names it, `ensemble_of` lists the members."""
    from mnist_cli.inference.predictions import load_split, predict_logits

    runs = best_runs(folder, top, ranked_by, asked_as="ensemble")
    cfg = config_for(runs, "val")
    device = torch.device("cpu")
    trained = load_model(cfg, device)
    split = load_split(trained, cfg, device)
    logits = predict_logits(trained, split.images, 1000)
    record = {column: None for column in leaderboard.COLUMNS}
    record.update(
        {
            "run": f"top-{top} ensemble",
            "overrides": {},
            "seed": None,
            "experiment": "",
            "best_val_accuracy": (logits.argmax(1) == split.labels).double().mean().item(),
            "best_val_loss": torch.nn.functional.cross_entropy(logits, split.labels).item(),
            "status": "ensemble",
            "error": None,
            "ensemble_of": runs,
        }
    )
    return record
