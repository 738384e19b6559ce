"""`mnist report <folder> [sort=...] [top=N] [format=table|json] [save=true] [plot=true]`.

Finds every run folder below <folder> (finished, failed and unfinished ones) and prints their
leaderboard. Reads only, unless save=true (leaderboard.csv/json) or plot=true (curves.png).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

from mnist_cli.errors import UserError, WriteFailed
from mnist_cli.runs import leaderboard, metrics

SORTS = f"{', '.join(leaderboard.METRIC_COLUMNS)} (or {', '.join(metrics.SUMMARY_METRICS)})"
SORT_TABLE = "\n".join(f"  {m.column:<22} {m.name}" for m in metrics.SUMMARY_METRICS.values())
USAGE = f"""usage: mnist report [FOLDER] [sort=COLUMN] [top=N] [format=table|json] [save=true] [plot=true] [group_seeds=false] [ensemble=K]

  mnist report outputs/multirun/2026-11-23/10-20-11-x9f2     # one sweep
  mnist report outputs/                                      # every run found below a folder
  mnist report outputs/ sort=best_val_loss top=10 format=json

FOLDER defaults to outputs/. A run whose files cannot be read is a `damaged` row that says why.
save=true writes leaderboard.csv/json, plot=true writes curves.png (validation accuracy per epoch
of the top runs that are not damaged), both into FOLDER. Runs that are one experiment but for seed
(a sweep over seed=0,1,2: stored configs equal but for seed, device, threads and other keys that do
not change what is learned, and the same epochs= or precision= given on resume) are one row: each
metric's mean ± standard deviation, and n; group_seeds=false shows one row per run. The table shows
the columns that fit the terminal, never a cut number; format=json and save=true have every column.
ensemble=K adds a row for the ensemble of the best K completed runs (by sort): the mean of their
probabilities on their shared validation split, as best_val_accuracy and best_val_loss.

sort: a column or its summary.json name; losses and seconds lowest first, accuracies highest
first; best_val_accuracy by default.
{SORT_TABLE}
"""
DEFAULTS = {
    "sort": "best_val_accuracy",
    "top": None,
    "format": "table",
    "save": False,
    "plot": False,
    "group_seeds": True,
    "ensemble": None,
}


def parse(args: List[str]) -> Dict:
    """The report options in `args` over DEFAULTS, plus `folder`; raises UserError for a bad one."""
    options = dict(DEFAULTS, folder="outputs")
    folders = []
    for arg in args:
        if "=" not in arg:
            folders.append(arg)
            continue
        key, value = arg.split("=", 1)
        if key not in DEFAULTS:
            raise UserError(f"'{key}' is not a report option; use {', '.join(DEFAULTS)}.")
        if key in ("top", "ensemble"):
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"{key} must be a positive whole number (got {value!r}).")
            options[key] = int(value)
        elif key in ("save", "plot", "group_seeds"):
            if value.lower() not in ("true", "false"):
                raise UserError(f"{key} must be true or false (got {value!r}).")
            options[key] = value.lower() == "true"
        elif key == "format" and value not in ("table", "json"):
            raise UserError(f"format must be table or json (got {value!r}).")
        elif key == "sort" and leaderboard.sort_metric(value) is None:
            raise UserError(f"sort must be one of {SORTS} (got {value!r}).")
        else:
            options[key] = value
    if len(folders) > 1:
        raise UserError(f"report takes one folder (got {len(folders)}).")
    if folders:
        options["folder"] = folders[0]
    return options


def report_command(args: List[str]) -> int:
    """Run `mnist report`; returns the exit code (2, with one sentence on stderr, for bad input)."""
    if any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return 0
    try:
        options = parse(args)
        folder = Path(options["folder"])
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; give a sweep folder or outputs/.")
        records = leaderboard.build(folder, options["sort"], None, options["group_seeds"])
        if not records:
            raise UserError(f"no run folders (summary.json or metrics.jsonl) below {folder}.")
        if options["ensemble"]:  # imports torch and runs the members on their validation split
            from mnist_cli.inference.ensembles import leaderboard_row

            row = leaderboard_row(folder, options["ensemble"], options["sort"])
            records = leaderboard.rank(records + [row], options["sort"])
        records = records[: options["top"]] if options["top"] else records
        if options["save"]:
            leaderboard.write(folder, records, options["sort"])
        if options["plot"]:
            from mnist_cli.runs.figures import curves_png

            top = [r for r in records[: options["top"] or 10] if r["status"] != "damaged"]
            plotted = [m for r in top for m in r.get("members", [r])]  # a seed group: each seed's own curve
            curves_png(folder / "curves.png", plotted)
    except (UserError, WriteFailed) as error:  # WriteFailed names the file; the previous one is kept
        print(f"mnist report: {error}", file=sys.stderr)
        return 2
    if options["format"] == "json":
        print(
            json.dumps(
                {"folder": str(folder), "sort": options["sort"], "rows": leaderboard.rows_for_output(records, folder)},
                indent=2,
            )
        )
    else:
        leaderboard.show(folder, records, options["sort"])
    return 0
