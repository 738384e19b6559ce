"""Leaderboards: every run folder below a path, one row each, sorted by a metric.

Used when a sweep ends (a Hydra callback) and by `mnist report`. Reads summary.json,
metrics.jsonl and .hydra/overrides.yaml; never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from mnist_cli import runs

COLUMNS = ("best_val_accuracy", "final_val_accuracy", "val_loss", "epochs", "seconds", "status")
# the metric names a sweep may optimise (`optimized_metric=`), as paths into summary.json
SUMMARY_METRICS = (
    "best.val_accuracy", "best.val_loss", "final.val_accuracy", "final.val_loss",
    "final.train_accuracy", "final.train_loss", "wall_seconds",
)  # fmt: skip
SORT_ALIASES = {"best.val_accuracy": "best_val_accuracy", "final.val_accuracy": "final_val_accuracy",
                "best.val_loss": "val_loss", "wall_seconds": "seconds"}  # fmt: skip


def lower_is_better(column: str) -> bool:
    return "loss" in column or "seconds" in column


def find_runs(path: Path) -> List[Path]:
    """Run folders at or below `path`: folders holding summary.json or metrics.jsonl."""
    path = Path(path)
    found = {p.parent for name in ("summary.json", "metrics.jsonl") for p in path.rglob(name)}
    return sorted(run for run in found if not run.is_symlink() and "latest" not in run.relative_to(path).parts)


def read_overrides(run_dir: Path) -> Dict[str, str]:
    """The command-line overrides of a run, as {key: value}, from .hydra/overrides.yaml."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    overrides = {}
    for line in path.read_text().splitlines():
        item = line.removeprefix("- ").strip().strip("'\"")
        if "=" in item:
            key, value = item.split("=", 1)
            overrides[key.lstrip("+~")] = value
    return overrides


def run_record(run_dir: Path) -> Dict:
    """One leaderboard row for a run folder; unfinished runs are scored from metrics.jsonl."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    epochs = runs.read_metrics(run_dir)
    best = max(epochs, key=lambda e: e["val_accuracy"], default=None)
    record = {
        "run": str(run_dir.resolve()),
        "overrides": read_overrides(run_dir),
        "status": summary.get("status", "unfinished"),
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "final_val_accuracy": epochs[-1]["val_accuracy"] if epochs else None,
        "val_loss": best["val_loss"] if best else None,
        "epochs": len(epochs),
        "seconds": summary.get("wall_seconds", round(sum(e["seconds"] for e in epochs), 3)),
        "error": summary.get("error"),
    }
    return record


def rank(records: List[Dict], sort: str) -> List[Dict]:
    """Sorted best first by `sort` (a column, or a summary metric path); runs without it go last."""
    column = SORT_ALIASES.get(sort, sort)
    if column not in COLUMNS:
        raise ValueError(sort)

    def key(record):
        value = record.get(column)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            return (1, 0.0)
        return (0, value if lower_is_better(column) else -value)

    return sorted(records, key=key)


def differing_overrides(records: List[Dict]) -> List[str]:
    """The override keys whose values differ between runs (shown as columns)."""
    keys = sorted({k for r in records for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1 or len(records) == 1]


HEADERS = {"best_val_accuracy": "best val acc", "final_val_accuracy": "final val acc", "val_loss": "val loss"}


def _cell(header: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if header == "seconds" else f"{value:.4f}"
    return str(value)


def rows_for_output(records: List[Dict]) -> List[Dict]:
    """Flat rows (rank, differing overrides, metric columns, run) for CSV, JSON and tables."""
    keys = differing_overrides(records)
    return [
        {"rank": i + 1, **{k: r["overrides"].get(k, "-") for k in keys}, **{c: r[c] for c in COLUMNS},
         "error": r["error"], "run": r["run"]}  # fmt: skip
        for i, r in enumerate(records)
    ]


def render(records: List[Dict], title: str):
    """A rich table; the best row highlighted, failed rows dimmed."""
    from rich.table import Table

    rows = rows_for_output(records)
    table = Table(title=title, title_justify="left")
    headers = [h for h in (rows[0] if rows else {"rank": 0}) if h not in ("run", "error")]
    for header in headers:
        table.add_column(HEADERS.get(header, header), justify="right" if header in COLUMNS or header == "rank" else "left")
    for i, row in enumerate(rows):
        finished = row["status"] in ("completed", "early_stopped")
        style = "bold green" if i == 0 and finished else (None if finished else "dim")
        table.add_row(*(_cell(h, row[h]) for h in headers), style=style)
    return table


def write(folder: Path, records: List[Dict], sort: str) -> None:
    """leaderboard.csv and leaderboard.json in `folder`, written atomically."""
    rows = rows_for_output(records)
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    runs.atomic_write(folder / "leaderboard.csv", lambda f: f.write(text.getvalue().encode()))
    runs.write_json(folder / "leaderboard.json", {"sort": sort, "rows": rows})


def build(path: Path, sort: str, top: Optional[int] = None) -> List[Dict]:
    records = rank([run_record(run) for run in find_runs(path)], sort)
    return records[:top] if top else records


def show(folder: Path, records: List[Dict], sort: str) -> None:
    """Print the leaderboard of `records`, the runs found below `folder`."""
    from mnist_cli.console import console

    console.print(render(records, title=f"{folder}: {len(records)} runs, by {sort}"))


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object


class LeaderboardCallback(Callback):
    """When a sweep ends: print its leaderboard and write leaderboard.csv/json in the sweep folder."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        sort = config.get("optimized_metric", "best.val_accuracy")
        records = build(sweep_dir, sort)
        show(sweep_dir, records, sort)
        write(sweep_dir, records, sort)
        print(f"leaderboard: {sweep_dir / 'leaderboard.csv'}")
