"""Sweeps: multirun folders, the leaderboard at the end, `mnist report` (Optuna searches: test_optuna.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_mnist, start_mnist

TINY = ["epochs=1", "data.limit=300", "data.val_size=60", "batch_size=60", "model.augment=false", "device=cpu"]


def sweep_dirs(workdir: Path) -> list:
    return sorted(p for p in (workdir / "outputs" / "multirun").glob("*/*") if p.is_dir())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")


@pytest.fixture(scope="module")
def sweep(workdir, cli_env) -> tuple:
    """A finished 2x2 sweep: (completed process, sweep folder)."""
    result = run_mnist("train", "-m", "model=mlp,lenet", "optimizer=sgd,adam", *TINY, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    (folder,) = sweep_dirs(workdir)
    return result, folder


@pytest.mark.slow
def test_sweep_puts_every_job_in_one_folder_and_ends_with_a_sorted_leaderboard(sweep):
    result, folder = sweep
    jobs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    board = json.loads((folder / "leaderboard.json").read_text())
    rows = board["rows"]
    assert len(rows) == 4 and board["sort"] == "best.val_accuracy"
    for row in rows:
        summary = json.loads((folder / row["run"] / "summary.json").read_text())
        assert row["best_val_accuracy"] == summary["best"]["val_accuracy"]
        assert row["seconds"] == summary["wall_seconds"] and row["status"] == "completed"
        assert (
            f"model={row['model']}" in summary["overrides"] and f"optimizer={row['optimizer']}" in summary["overrides"]
        )
    accuracies = [r["best_val_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True) and sorted(r["run"] for r in rows) == jobs
    assert (
        (folder / "leaderboard.csv")
        .read_text()
        .splitlines()[0]
        .startswith("rank,run,model,optimizer,best_val_accuracy")
    )
    assert "best val acc" in result.stdout  # printed when the sweep ended


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path, cli_env):
    result = run_mnist("train", "-m", "model=mlp", "optimizer.lr=0.002,-1,0.003", *TINY, cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "optimizer.lr must be greater than 0" in result.stderr and "Traceback" not in result.stderr
    (folder,) = sweep_dirs(tmp_path)
    statuses = {r["optimizer.lr"]: r["status"] for r in json.loads((folder / "leaderboard.json").read_text())["rows"]}
    assert statuses == {"0.002": "completed", "-1": "failed", "0.003": "completed"}


@pytest.mark.slow
def test_concurrent_sweeps_get_their_own_folders(tmp_path, cli_env):
    procs = [
        start_mnist("train", "-m", "model=mlp", "model.hidden=[16],[32]", *TINY, cwd=tmp_path, env=cli_env)
        for _ in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    folders = sweep_dirs(tmp_path)
    assert len(folders) == 2
    for folder in folders:
        assert len(json.loads((folder / "leaderboard.json").read_text())["rows"]) == 2


@pytest.mark.slow
def test_report_shows_finished_failed_and_unfinished_runs_and_writes_nothing(sweep, tmp_path, cli_env):
    _, folder = sweep
    copy = tmp_path / "runs"
    shutil.copytree(folder, copy)
    (copy / "leaderboard.csv").unlink()
    (copy / "leaderboard.json").unlink()
    interrupted = copy / "2"
    (interrupted / "summary.json").unlink()  # killed before the end: metrics.jsonl only
    failed = copy / "3"
    summary = json.loads((failed / "summary.json").read_text())
    (failed / "summary.json").write_text(json.dumps({**summary, "status": "diverged"}))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))

    table = run_mnist("report", str(copy), cwd=tmp_path, env=cli_env)
    assert table.returncode == 0, table.stderr
    assert "unfinished" in table.stdout and "diverged" in table.stdout and "completed" in table.stdout
    as_json = run_mnist("report", str(copy), "sort=best.val_loss", "top=3", "format=json", cwd=tmp_path, env=cli_env)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)["rows"]
    assert len(rows) == 3
    losses = [r["best_val_loss"] for r in rows]
    assert losses == sorted(losses)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # report only reads

    saved = run_mnist("report", str(copy), "save=true", "plot=true", cwd=tmp_path, env=cli_env)
    assert saved.returncode == 0, saved.stderr
    assert (copy / "leaderboard.csv").exists() and (copy / "curves.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["nowhere/"], "is not a folder"),
        (["outputs/", "sort=bogus"], "sort must be one of"),
        (["outputs/", "top=0"], "top must be a positive whole number"),
        (["outputs/", "colour=red"], "'colour' is not a report option"),
    ],
)
def test_report_bad_input(args, message, tmp_path, cli_env):
    (tmp_path / "outputs").mkdir()
    result = run_mnist("report", *args, cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
