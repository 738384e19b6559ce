"""The `mnist report` table at the widths people read it: 80 and 120 columns in a terminal, and a file
(`mnist report outputs/ > r.txt`). Columns that do not fit are left out, and the table says which;
a shown cell is never cut."""

from __future__ import annotations

import os
import pty
import re
import threading
from pathlib import Path

import pytest
from rich.cells import cell_len
from test_report import completed, epoch_row, make_run, report_json

from conftest import run_mnist, start_mnist

SWEEP = "multirun/2026-11-23/10-20-11-x9f2"


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ after a sweep over model, optimizer and seed=0,1,2, a failed job and a killed one."""
    folder = tmp_path / "outputs"
    job = 0
    for model in ("mlp", "lenet"):
        for optimizer in ("adam", "rmsprop"):
            for seed in range(3):
                accuracy = 0.9 + job / 1000
                overrides = [f"model={model}", f"optimizer={optimizer}", f"seed={seed}"]
                make_run(
                    folder / SWEEP / str(job),
                    completed(accuracy, wall_seconds=1234.5),
                    [epoch_row(1, accuracy)],
                    overrides,
                )
                job += 1
    make_run(
        folder / SWEEP / str(job),
        {"status": "diverged"},
        [epoch_row(1, 0.1)],
        ["model=cnn", "optimizer=adam", "seed=0"],
    )
    make_run(folder / "train/2026-11-24/08-01-55-c0ffee", None, [epoch_row(1, 0.5)], ["model=cnn"])
    return folder


def in_terminal(folder: Path, columns: int, env: dict, *args: str) -> str:
    """What `mnist report FOLDER *args` shows in a terminal `columns` wide, without its styles."""
    leader, follower = pty.openpty()
    chunks = []
    reader = threading.Thread(target=lambda: _drain(leader, chunks))
    reader.start()
    command = start_mnist(
        "report", str(folder), *args, cwd=folder, env=dict(env, COLUMNS=str(columns)), stdout=Path(os.ttyname(follower))
    )
    _, stderr = command.communicate(timeout=120)
    os.close(follower)
    reader.join()
    os.close(leader)
    assert command.returncode == 0, stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r", "")


def _drain(fd: int, chunks: list) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            return
        if not chunk:
            return
        chunks.append(chunk)


def check_table(text: str, width: int, rows: list, sort: str) -> None:
    """Every line fits `width`, nothing is cut, the sort metric and the swept keys are shown in full."""
    lines = text.splitlines()
    assert max(map(cell_len, lines)) <= width, text
    assert "…" not in text, text
    header = next(line for line in lines if "rank" in line)
    for key in ("model", "optimizer", "seed", "n"):
        assert f" {key} " in header, text
    digits = ".1f" if sort == "seconds" else ".4f"
    for row in rows:
        std = row.get(f"{sort}_std")
        mean = "-" if row[sort] is None else f"{row[sort]:{digits}}"
        assert (f"{mean} ± {std:{digits}}" if std else f" {mean} ") in text, text
        assert f" {row['seed']} " in text, text
    footer = " ".join(
        line.strip() for line in lines[lines.index(next(line for line in lines if line.startswith("└"))) + 1 :]
    )
    assert (footer == "") == ("best val loss" in header and " run " in header and "epochs done" in header), text
    assert (
        footer == ""
        or footer.startswith(f"Not shown at {width} columns: ")
        and "(format=json or save=true has every column)." in footer
    )


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("sort", ["best_val_accuracy", "seconds"])
def test_a_terminal_shows_the_columns_that_fit_and_never_cuts_a_number(columns, sort, outputs, cli_env):
    rows = report_json(outputs, f"sort={sort}", env=cli_env)
    assert sorted(r["n"] for r in rows) == [1, 1, 3, 3, 3, 3]
    text = in_terminal(outputs, columns, cli_env, f"sort={sort}")
    check_table(text, columns, rows, sort)
    assert (
        " status " in text and ("diverged" in text) and ("unfinished" in text)
    )  # a word that changes what a number means


def test_a_report_into_a_file_is_whole(outputs, cli_env):
    rows = report_json(outputs, env=cli_env)
    result = run_mnist("report", str(outputs), cwd=outputs, env={k: v for k, v in cli_env.items() if k != "COLUMNS"})
    assert result.returncode == 0, result.stderr
    check_table(result.stdout, 160, rows, "best_val_accuracy")  # not a terminal: 160 columns
    for word in ("completed", "diverged", "unfinished"):
        assert f" {word} " in result.stdout
    ungrouped = run_mnist("report", str(outputs), "group_seeds=false", cwd=outputs, env=cli_env)
    assert ungrouped.returncode == 0 and "…" not in ungrouped.stdout
