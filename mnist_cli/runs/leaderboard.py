"""Leaderboards: every run folder below a path, one row each, sorted by a summary metric.

Used when a sweep ends (a Hydra callback) and by `mnist report`, which also puts runs that are the
same experiment but for `seed` in one row: each metric's mean ± standard deviation over the seeds,
and n. Reads summary.json, metrics.jsonl and .hydra/{config,overrides}.yaml; never imports torch.
Reading is tolerant: a damaged file makes its run a `damaged` row that says why, and the other runs
are shown as usual. The table shows the columns that fit the console, most telling first, and never
cuts a number. Writing (leaderboard.csv/json) is atomic and raises WriteFailed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hydra.experimental.callback import Callback

from mnist_cli.errors import WriteFailed
from mnist_cli.runs import metrics
from mnist_cli.runs.atomic import write_csv, write_json
from mnist_cli.runs.run_records import (
    find_runs,
    natural_key,
    run_record,
)

DEFAULT_SORT = "best.val_accuracy"
METRIC_COLUMNS = tuple(m.column for m in metrics.SUMMARY_METRICS.values())
# `epochs_done`, not `epochs`: an `epochs=3` override is a column of its own (the planned epochs)
COLUMNS = (*METRIC_COLUMNS, "epochs_done", "status")
BY_COLUMN = {m.column: m for m in metrics.SUMMARY_METRICS.values()}


def sort_metric(sort: str) -> Optional[metrics.SummaryMetric]:
    """The summary metric `sort` names, by its dotted name (best.val_loss) or its column
    (best_val_loss); None when it names neither."""
    return metrics.SUMMARY_METRICS.get(sort) or BY_COLUMN.get(sort)


def rank(records: List[Dict], sort: str) -> List[Dict]:
    """`records` sorted best first by `sort` (a summary metric or its column), in that metric's
    direction; runs without a value go last. Raises ValueError for an unknown `sort`."""
    metric = sort_metric(sort)
    if metric is None:
        raise ValueError(sort)

    def key(record):  # ties in the runs' natural order
        value = record[metric.column]
        if value is None:
            return (1, 0.0, natural_key(record["run"]))
        return (0, value if metric.lower_is_better else -value, natural_key(record["run"]))

    return sorted(records, key=key)


def seed_groups(records: List[Dict]) -> List[List[Dict]]:
    """`records` in groups: the finished runs of one experiment (see `experiment`), each seed once,
    make a group, in seed order; every other run is a group of its own (two runs with the same seed
    are repeats, not a spread; a failed, damaged or unfinished run is shown as it is, not averaged)."""
    by_experiment: Dict[str, List[Dict]] = {}
    groups = []
    for record in records:
        if record["status"] not in ("completed", "early_stopped"):
            groups.append([record])
            continue
        by_experiment.setdefault(record["experiment"], []).append(record)
    for members in by_experiment.values():
        seeds = [m["seed"] for m in members]
        if len(members) > 1 and None not in seeds and len(set(seeds)) == len(seeds):
            groups.append(sorted(members, key=lambda m: natural_key(m["seed"])))
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
    """One row for runs of one experiment but for seed: each metric's mean over the runs that have
    it, `<column>_std` beside it, n (runs), the seeds as the seed override, and the runs themselves.
    An override the runs give differently (device=cpu / cuda) lists each value once, `-` for none."""
    statuses = {m["status"] for m in members}
    keys = sorted({k for m in members for k in m["overrides"]})
    values = {k: list(dict.fromkeys(m["overrides"].get(k, "-") for m in members)) for k in keys}
    record = {
        "run": members[0]["run"],
        "overrides": {**{k: ",".join(v) for k, v in values.items()}, "seed": ",".join(m["seed"] for m in members)},
        "seed": None,
        "n": len(members),
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "error": "; ".join(f"{Path(m['run']).name}: {m['error']}" for m in members if m["error"]) or None,
        "members": members,
    }
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


def run_label(record: Dict, folder: Path) -> str:
    """The run column of the table: run_name, and a seed group's runs in one folder as that folder
    and their names (`sweep/0,1,2`), short enough to read at 80 columns."""
    names = [run_name(m["run"], folder) for m in record.get("members", [record])]
    parents = {str(Path(name).parent) for name in names}
    if len(names) > 1 and len(parents) == 1 and parents != {"."}:
        return f"{parents.pop()}/{','.join(Path(name).name for name in names)}"
    return ",".join(names)


def rows_for_output(records: List[Dict], folder: Path) -> List[Dict]:
    """Flat rows (rank, run, differing overrides, COLUMNS, error) for CSV, JSON and tables; with
    seed groups among them also n and each metric's `<column>_std` (0.0 for a lone run)."""
    keys = differing_overrides(records)
    grouped = any("members" in r for r in records)
    rows = []
    for i, r in enumerate(records):
        row = {
            "rank": i + 1,
            "run": ",".join(run_name(m["run"], folder) for m in r.get("members", [r])),
            **{k: r["overrides"].get(k, "-") for k in keys},
            **{c: r[c] for c in COLUMNS},
        }
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


RUN_WIDTH = 16  # the run column folds a long path onto more lines down to this width; no other cell is cut


def fitting_columns(rows: List[Dict], sort: str, width: int) -> Tuple[List[str], List[str]]:
    """(the columns of `rows` (rows_for_output) a table `width` characters wide can show whole, in
    table order; those left out). Taken most telling first: rank, the sort metric, the overrides
    that differ, n, status (a word that changes what the numbers mean), run, then the other metrics;
    rank and the sort metric always."""
    from rich.cells import cell_len

    headers = [h for h in (rows[0] if rows else {"rank": 0}) if h != "error" and not h.endswith("_std")]
    swept = [h for h in headers if h not in ("rank", "run", "n", *COLUMNS)]
    first = ["rank", sort_metric(sort).column, *swept, "n", "status", "run"]
    wanted = [h for h in first if h in headers] + [h for h in headers if h not in first]
    shown, used = set(), 1  # a table is its columns, each with a space either side and a rule after, and a rule
    for i, header in enumerate(wanted):
        cells = [_header(header), *(_cells(header, row) for row in rows)]
        need = max(map(cell_len, cells)) + 3
        if header == "run":
            need = min(need, RUN_WIDTH + 3)
        if i < 2 or used + need <= width:
            shown.add(header)
            used += need
    return [h for h in headers if h in shown], [h for h in wanted if h not in shown]


def _cells(header: str, row: Dict) -> str:
    """A row's cell in `header`'s column: a mean is followed by its `± std`."""
    std = row.get(header + "_std")
    return _cell(header, row[header]) + (f" ± {_cell(header, std)}" if std else "")


def render(rows: List[Dict], title: str, headers: List[str]):
    """A rich table of `rows` (rows_for_output) in the columns `headers`, without their errors; the
    best row highlighted, failed, unfinished and damaged rows dimmed."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for header in headers:
        numeric = header in METRIC_COLUMNS or header in ("rank", "epochs_done", "n")
        if header == "run":
            table.add_column(_header(header), overflow="fold")
        else:
            table.add_column(_header(header), justify="right" if numeric else "left", no_wrap=True)
    for i, row in enumerate(rows):
        finished = row["status"] in ("completed", "early_stopped")
        style = "bold green" if i == 0 and finished else (None if finished else "dim")
        table.add_row(*(_cells(h, row) for h in headers), style=style)
    return table


def write(folder: Path, records: List[Dict], sort: str) -> None:
    """leaderboard.csv and leaderboard.json in `folder`, each atomically; raises WriteFailed (the
    previous file is kept)."""
    rows = rows_for_output(records, folder)
    columns = list(rows[0]) if rows else ["rank", "run", *COLUMNS, "error"]  # no runs: the header alone
    write_csv(folder / "leaderboard.csv", rows, columns)
    write_json(folder / "leaderboard.json", {"folder": str(Path(folder).resolve()), "sort": sort, "rows": rows})


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
    grouped = (
        f" ({len(records)} rows: runs that differ only in seed are one row, mean ± std)"
        if runs_found > len(records)
        else ""
    )
    shown = [{**row, "run": run_label(record, folder)} for row, record in zip(rows, records)]
    headers, left_out = fitting_columns(shown, sort, console.width)
    console.print(render(shown, f"{folder}: {runs_found} runs{grouped}, by {sort}", headers))
    if left_out:
        console.print(
            f"Not shown at {console.width} columns: {', '.join(map(_header, left_out))} "
            "(format=json or save=true has every column).",
            markup=False,
        )
    for row in rows:
        if row["error"]:
            console.print(
                f"{row['rank']}. {row['run']} ({row['status']}): {row['error']}", markup=False, soft_wrap=True
            )


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
