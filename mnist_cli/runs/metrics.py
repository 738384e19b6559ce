"""Metrics: the per-epoch rows of a run (metrics.jsonl, metrics.csv) and the summary metrics a
sweep optimises and a leaderboard ranks by.

The epoch history is kept in the checkpoint; metrics.jsonl/csv are rewritten from it atomically,
so a kill never leaves half a line. Readers still skip an unreadable line (a file written by an
older mnist-cli, or edited by hand) and say so once. Never imports torch.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from mnist_cli.runs.atomic import write_csv, write_jsonl
from mnist_cli.runs.folder import RunFolder

EPOCH_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass(frozen=True)
class SummaryMetric:
    """A number in summary.json that a sweep may optimise (`optimized_metric=`) and a report sort by."""

    name: str  # its dotted path in summary.json, as the user writes it: best.val_accuracy
    column: str  # its leaderboard column
    lower_is_better: bool


SUMMARY_METRICS: Dict[str, SummaryMetric] = {
    m.name: m
    for m in (
        SummaryMetric("best.val_accuracy", "best_val_accuracy", False),
        SummaryMetric("best.val_loss", "best_val_loss", True),
        SummaryMetric("final.val_accuracy", "final_val_accuracy", False),
        SummaryMetric("final.val_loss", "final_val_loss", True),
        SummaryMetric("final.train_accuracy", "final_train_accuracy", False),
        SummaryMetric("final.train_loss", "final_train_loss", True),
        SummaryMetric("wall_seconds", "seconds", True),
    )
}


def optimization_direction(metric: str) -> str:
    """`minimize` for a loss or a time, `maximize` for an accuracy: how a search treats `metric`
    (an unknown one is refused by config.check_config before any trial)."""
    known = SUMMARY_METRICS.get(metric)
    return "minimize" if known is not None and known.lower_is_better else "maximize"


def summary_value(summary: Any, name: str) -> Optional[float]:
    """The finite number at `name` (a dotted path) in a summary.json document, else None."""
    value = summary
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def files(run_dir: Path) -> tuple:
    """(metrics.jsonl, metrics.csv) of the run in `run_dir`."""
    run = RunFolder(run_dir)
    return run.metrics_jsonl, run.metrics_csv


def write_epochs(run_dir: Path, rows: List[Dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv with `rows`, each atomically."""
    jsonl, csv_path = files(run_dir)
    write_jsonl(jsonl, rows)
    extra = [key for key in (rows[0] if rows else {}) if key not in EPOCH_COLUMNS]  # ema_decay's columns
    write_csv(csv_path, rows, EPOCH_COLUMNS + tuple(extra))


_reported: Set[str] = set()


def _say_once(path: Path, message: str) -> None:
    key = str(Path(path).resolve())
    if key not in _reported:
        _reported.add(key)
        print(message, file=sys.stderr)


def read_epoch_file(run_dir: Path) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """(the readable epoch rows of metrics.jsonl, [] when there is none; what is wrong with the
    file, or None). An unreadable line is skipped; what was skipped is said once per file on stderr."""
    path = files(run_dir)[0]
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return [], None
    except OSError as error:
        _say_once(path, f"mnist: could not read {path} ({error.strerror}); its epochs are not shown.")
        return [], f"metrics.jsonl could not be read ({error.strerror})"
    rows, skipped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            skipped += 1
    if not skipped:
        return rows, None
    _say_once(path, f"mnist: skipped {skipped} unreadable line(s) in {path} (a write cut off, or edited by hand).")
    return rows, f"metrics.jsonl has {skipped} unreadable line(s)"


def read_epochs(run_dir: Path) -> List[Dict[str, Any]]:
    """The readable epoch rows of metrics.jsonl (see read_epoch_file)."""
    return read_epoch_file(run_dir)[0]
