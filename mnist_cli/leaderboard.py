"""Leaderboards: every run folder below a path, one row each, sorted by a summary metric.

Used when a sweep ends (a Hydra callback) and by `mnist report`, which also puts runs that differ
only in `seed` in one row: each metric's mean ± standard deviation over the seeds, and n. Reads summary.json,
metrics.jsonl and .hydra/overrides.yaml; never imports torch. Reading is tolerant: a damaged
file makes its run a `damaged` row that says why, and the other runs are shown as usual.
Writing (leaderboard.csv/json) is atomic and raises WriteFailed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from mnist_cli import metrics, runs
from mnist_cli.errors import WriteFailed

DEFAULT_SORT = "best.val_accuracy"
METRIC_COLUMNS = tuple(m.column for m in metrics.SUMMARY_METRICS.values())
# `epochs_done`, not `epochs`: an `epochs=3` override is a column of its own (the planned epochs)
COLUMNS = (*METRIC_COLUMNS, "epochs_done", "status")
BY_COLUMN = {m.column: m for m in metrics.SUMMARY_METRICS.values()}


def sort_metric(sort: str) -> Optional[metrics.SummaryMetric]:
    """The summary metric `sort` names, by its dotted name (best.val_loss) or its column
    (best_val_loss); None when it names neither."""
    return metrics.SUMMARY_METRICS.get(sort) or BY_COLUMN.get(sort)


def find_runs(path: Path) -> List[Path]:
    """Run folders at or below `path`: folders holding summary.json or metrics.jsonl."""
    path = Path(path)
    found = {p.parent for name in ("summary.json", "metrics.jsonl") for p in path.rglob(name)}
    return sorted(run for run in found if not run.is_symlink() and "latest" not in run.relative_to(path).parts)


def read_summary(run_dir: Path) -> Tuple[Dict, Optional[str]]:
    """(summary.json as a dict, {} when there is none or it is damaged; what is wrong with it, or None)."""
    try:
        text = (run_dir / "summary.json").read_text()
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, f"summary.json could not be read ({error.strerror})"
    except ValueError:  # not UTF-8
        return {}, "summary.json is not valid JSON"
    if not text.strip():
        return {}, "summary.json is empty"
    try:
        summary = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return {}, "summary.json is not valid JSON"
    if not isinstance(summary, dict):
        return {}, "summary.json is not a JSON object"
    if not isinstance(summary.get("status"), str):
        return summary, "summary.json has no status"
    return summary, None


def read_epochs(run_dir: Path) -> Tuple[List[Dict], Optional[str]]:
    """(metrics.jsonl's readable rows; what is wrong with the file, or None). A null val_accuracy
    is no value (data.val_size=0); a missing one or a string is damage."""
    epochs, problem = metrics.read_epoch_file(run_dir)
    if problem:
        return epochs, problem
    for epoch in epochs:
        value = epoch.get("val_accuracy", "")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return epochs, f"metrics.jsonl epoch {epoch['epoch']} has no val_accuracy number"
    return epochs, None


def read_overrides(run_dir: Path) -> Tuple[Dict[str, str], Optional[str]]:
    """(the command-line overrides of a run as {key: value} from .hydra/overrides.yaml, {} when
    there is none or it is damaged; what is wrong with it, or None)."""
    import yaml

    try:
        items = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, f".hydra/overrides.yaml could not be read ({error.strerror})"
    except (ValueError, yaml.YAMLError):
        return {}, ".hydra/overrides.yaml is not valid YAML"
    if not isinstance(items, (list, type(None))) or not all(isinstance(item, str) for item in items or []):
        return {}, ".hydra/overrides.yaml is not a list of overrides"
    overrides = {}
    for item in items or []:
        if "=" in item:
            key, value = item.split("=", 1)
            overrides[key.lstrip("+~")] = value
    return overrides, None


def summary_of_epochs(epochs: List[Dict]) -> Dict:
    """What summary.json says about these epoch rows (best, final, wall_seconds): how an unfinished
    run is scored. Best is the first epoch with the highest val_accuracy, as in training."""
    if not epochs:
        return {}
    scored = [e for e in epochs if metrics.summary_value(e, "val_accuracy") is not None]
    seconds = [metrics.summary_value(e, "seconds") for e in epochs]
    return {
        "best": max(scored, key=lambda e: e["val_accuracy"], default=None),
        "final": epochs[-1],
        "wall_seconds": None if None in seconds else round(sum(seconds), 3),
    }


def run_record(run_dir: Path) -> Dict:
    """One leaderboard row for a run folder: run (absolute path), overrides, a column per summary
    metric, epochs_done, status and error. Each metric comes from summary.json, else from
    metrics.jsonl (unfinished runs); a damaged file makes status `damaged` with the reason in
    error, and keeps whatever could still be read."""
    summary, summary_problem = read_summary(run_dir)
    epochs, epochs_problem = read_epochs(run_dir)
    overrides, overrides_problem = read_overrides(run_dir)
    problem = summary_problem or epochs_problem or overrides_problem
    from_epochs = summary_of_epochs(epochs)
    record = {"run": str(run_dir.resolve()), "overrides": overrides}
    for metric in metrics.SUMMARY_METRICS.values():
        value = metrics.summary_value(summary, metric.name)
        record[metric.column] = value if value is not None else metrics.summary_value(from_epochs, metric.name)
    done = metrics.summary_value(summary, "epochs_completed")
    record["epochs_done"] = int(done) if done is not None else len(epochs)
    error = summary.get("error")
    record["status"] = "damaged" if problem else summary.get("status", "unfinished")
    record["error"] = problem or (None if error is None else str(error))
    return record


def rank(records: List[Dict], sort: str) -> List[Dict]:
    """`records` sorted best first by `sort` (a summary metric or its column), in that metric's
    direction; runs without a value go last. Raises ValueError for an unknown `sort`."""
    metric = sort_metric(sort)
    if metric is None:
        raise ValueError(sort)

    def key(record):
        value = record[metric.column]
        if value is None:
            return (1, 0.0)
        return (0, value if metric.lower_is_better else -value)

    return sorted(records, key=key)


def seed_groups(records: List[Dict]) -> List[List[Dict]]:
    """`records` in groups: the finished runs whose overrides are the same but for `seed`, each seed
    once, make a group; every other run is a group of its own (two runs with the same seed are
    repeats, not a spread; a failed, damaged or unfinished run is shown as it is, not averaged)."""
    by_setup: Dict[tuple, List[Dict]] = {}
    groups = []
    for record in records:
        if record["status"] not in ("completed", "early_stopped"):
            groups.append([record])
            continue
        setup = tuple(sorted((k, v) for k, v in record["overrides"].items() if k != "seed"))
        by_setup.setdefault(setup, []).append(record)
    for members in by_setup.values():
        seeds = [m["overrides"].get("seed") for m in members]
        if len(members) > 1 and None not in seeds and len(set(seeds)) == len(seeds):
            groups.append(sorted(members, key=lambda m: m["run"]))
        else:
            groups.extend([m] for m in members)
    return groups


def mean_and_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    """(mean, sample standard deviation) of `values`; (None, None) for none, std 0.0 for one."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, spread**0.5


def group_record(members: List[Dict]) -> Dict:
    """One row for runs that differ only in seed: each metric's mean over the runs that have it,
    `<column>_std` beside it, n (runs), the seeds as the seed override, and the runs themselves."""
    statuses = {m["status"] for m in members}
    record = {
        "run": members[0]["run"],
        "overrides": {**{k: v for k, v in members[0]["overrides"].items() if k != "seed"},
                      "seed": ",".join(m["overrides"]["seed"] for m in members)},
        "n": len(members),
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "error": "; ".join(f"{Path(m['run']).name}: {m['error']}" for m in members if m["error"]) or None,
        "members": members,
    }  # fmt: skip
    for column in METRIC_COLUMNS:
        record[column], record[f"{column}_std"] = mean_and_std([m[column] for m in members if m[column] is not None])
    done = {m["epochs_done"] for m in members}
    record["epochs_done"] = done.pop() if len(done) == 1 else min(done)
    return record


def differing_overrides(records: List[Dict]) -> List[str]:
    """The override keys whose values differ between runs (shown as columns)."""
    keys = sorted({k for r in records for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1 or len(records) == 1]


def run_name(run: str, folder: Path) -> str:
    """A run folder as the `run` column shows it: relative to the leaderboard's folder (`3`,
    `train/2026-11-23/10-15-02-ab12cd`, `.` for the folder itself)."""
    try:
        return str(Path(run).relative_to(Path(folder).resolve()))
    except ValueError:
        return run


def rows_for_output(records: List[Dict], folder: Path) -> List[Dict]:
    """Flat rows (rank, run, differing overrides, COLUMNS, error) for CSV, JSON and tables; with
    seed groups among them also n and each metric's `<column>_std` (0.0 for a lone run)."""
    keys = differing_overrides(records)
    grouped = any("members" in r for r in records)
    rows = []
    for i, r in enumerate(records):
        row = {"rank": i + 1, "run": ",".join(run_name(m["run"], folder) for m in r.get("members", [r])),
               **{k: r["overrides"].get(k, "-") for k in keys}, **{c: r[c] for c in COLUMNS}}  # fmt: skip
        if grouped:
            row["n"] = r.get("n", 1)
            row.update({f"{c}_std": r.get(f"{c}_std", None if r[c] is None else 0.0) for c in METRIC_COLUMNS})
        rows.append({**row, "error": r["error"]})
    return rows


def _header(column: str) -> str:
    return column.replace("_accuracy", "_acc").replace("_", " ")


def _cell(header: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if header == "seconds" else f"{value:.4f}"
    return str(value)


def render(rows: List[Dict], title: str):
    """A rich table of `rows` (rows_for_output) without their errors; the best row highlighted,
    failed, unfinished and damaged rows dimmed."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    headers = [h for h in (rows[0] if rows else {"rank": 0}) if h != "error" and not h.endswith("_std")]
    for header in headers:
        numeric = header in METRIC_COLUMNS or header in ("rank", "epochs_done", "n")
        table.add_column(_header(header), justify="right" if numeric else "left")
    for i, row in enumerate(rows):
        finished = row["status"] in ("completed", "early_stopped")
        style = "bold green" if i == 0 and finished else (None if finished else "dim")
        cells = [_cell(h, row[h]) + (f" ± {_cell(h, row[h + '_std'])}" if row.get(h + "_std") else "") for h in headers]
        table.add_row(*cells, style=style)
    return table


def write(folder: Path, records: List[Dict], sort: str) -> None:
    """leaderboard.csv and leaderboard.json in `folder`, each atomically; raises WriteFailed (the
    previous file is kept)."""
    rows = rows_for_output(records, folder)
    columns = list(rows[0]) if rows else ["rank", "run", *COLUMNS, "error"]  # no runs: the header alone
    runs.write_csv(folder / "leaderboard.csv", rows, columns)
    runs.write_json(folder / "leaderboard.json", {"folder": str(Path(folder).resolve()), "sort": sort, "rows": rows})


def build(path: Path, sort: str, top: Optional[int] = None, group_seeds: bool = False) -> List[Dict]:
    """The records of every run below `path` (with group_seeds, runs that differ only in seed as
    one group record each), ranked by `sort`, the first `top` of them."""
    records = [run_record(run) for run in find_runs(path)]
    if group_seeds:
        records = [members[0] if len(members) == 1 else group_record(members) for members in seed_groups(records)]
    records = rank(records, sort)
    return records[:top] if top else records


def show(folder: Path, records: List[Dict], sort: str) -> None:
    """Print the leaderboard of `records`, the runs found below `folder`, then each row's error."""
    from mnist_cli.console import console

    rows = rows_for_output(records, folder)
    runs_found = sum(r.get("n", 1) for r in records)
    grouped = f" ({len(records)} rows: runs that differ only in seed are one row, mean ± std)" if runs_found > len(records) else ""
    console.print(render(rows, f"{folder}: {runs_found} runs{grouped}, by {sort}"))
    for row in rows:
        if row["error"]:
            console.print(f"{row['rank']}. {row['run']} ({row['status']}): {row['error']}", markup=False, soft_wrap=True)


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
        sort = config.get("optimized_metric", DEFAULT_SORT)
        if sort_metric(sort) is None:  # every job already refused it; rank the sweep anyway
            sort = DEFAULT_SORT
        records = build(sweep_dir, sort)
        show(sweep_dir, records, sort)
        try:
            write(sweep_dir, records, sort)
        except WriteFailed as error:
            print(f"mnist train: {error}", file=sys.stderr)
            return
        print(f"leaderboard: {sweep_dir / 'leaderboard.csv'}")
