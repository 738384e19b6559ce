"""Where a run stands (RunState) and summary.json, the document that reports it.

RunState is what last.pt records besides the weights; summary() turns it into summary.json's
document; record_failure marks a run that failed before or while training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from mnist_cli.runs.atomic import write_json
from mnist_cli.runs.folder import RunFolder


@dataclass
class RunState:
    """Where a run stands: what last.pt records besides the weights, and what summary.json reports."""

    overrides: List[str]  # the command line the run was started with
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in epoch + 1 (a mid-epoch checkpoint)
    best: Dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_accuracy": None, "val_loss": None})
    last_improvement: int = 0  # the epoch that last raised the best accuracy by more than min_delta
    history: List[Dict[str, Any]] = field(default_factory=list)  # one metrics row per completed epoch
    wall_seconds: float = 0.0  # time spent by earlier processes of this run (resumed runs)

    def record(self, row: Dict[str, Any], min_delta: float) -> bool:
        """Add a completed epoch's row; returns whether it is the best so far (with no validation
        split every epoch is: the last one is kept as best)."""
        accuracy, best = row["val_accuracy"], self.best["val_accuracy"]
        is_best = accuracy is None or best is None or accuracy > best
        if accuracy is None or best is None or accuracy > best + min_delta:
            self.last_improvement = row["epoch"]
        if is_best:
            self.best = {"epoch": row["epoch"], "val_accuracy": accuracy, "val_loss": row["val_loss"]}
        self.epoch, self.step = row["epoch"], 0
        self.history.append(row)
        return is_best


def summary_of(
    status: str,
    run_dir: Path,
    cfg,
    state: RunState,
    facts: Dict[str, Any],
    wall_seconds: float,
    resumed_with: List[str],
    warning: Optional[str],
) -> Dict[str, Any]:
    """summary.json's document for a run as it stands. `facts`: what the trainer knows about the
    model and machine (parameters, device, device_name, threads, versions, started_at)."""
    history = state.history
    document = {
        "status": status,
        "run_dir": str(run_dir),
        "overrides": state.overrides,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "scheduler": cfg.scheduler.name,
        "parameters": facts["parameters"],
        "epochs": cfg.epochs,
        "epochs_completed": state.epoch,
        "best": state.best,
        "final": history[-1] if history else {},
        "wall_seconds": round(wall_seconds, 3),
        "seconds_per_epoch": round(sum(r["seconds"] for r in history) / len(history), 3) if history else None,
        **{key: facts[key] for key in ("device", "device_name", "threads", "versions", "started_at")},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if resumed_with:
        document["resumed_with"] = resumed_with
    if facts.get("resumes"):  # every resume's, in order: a report tells a run resumed in bf16 once from others
        document["resumes"] = [list(overrides) for overrides in facts["resumes"]]
    if status == "early_stopped":
        document["early_stopping"] = {
            "patience": cfg.early_stopping.patience,
            "min_delta": cfg.early_stopping.min_delta,
            "last_improvement": state.last_improvement,
        }
    if history and status in ("completed", "early_stopped"):
        document["learned"] = warning is None
        if warning:
            document["warning"] = warning
    return document


def record_failure(run_dir: Path, error: str, overrides: list) -> None:
    """Mark a sweep job failed in its summary.json (keeping what a started run already wrote)."""
    path = RunFolder(Path(run_dir)).summary
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: the failure is what matters now
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    if summary.get("status") in (None, "completed"):
        summary["status"] = "failed"
    summary.update(error=error, overrides=overrides, run_dir=str(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, summary)
