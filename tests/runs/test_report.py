"""`mnist report` and the sweep-end leaderboard on run folders written by hand: damaged files,
every sort metric, the run column, a full disk. No training, so these are fast."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_mnist
from mnist_cli.config.schema import FolderDatasetConfig, TrainConfig
from mnist_cli.runs import atomic, leaderboard, metrics, report, run_records

# the direction each metric should sort in, written here on purpose: not read from metrics.py
LOWER_IS_BETTER = {
    "best.val_accuracy": False,
    "best.val_loss": True,
    "final.val_accuracy": False,
    "final.val_loss": True,
    "final.train_accuracy": False,
    "final.train_loss": True,
    "wall_seconds": True,
}


@pytest.fixture
def env() -> dict:
    environment = dict(os.environ, COLUMNS="200")
    environment.pop("HYDRA_FULL_ERROR", None)
    return environment


def epoch_row(epoch: int, val_accuracy=0.5, **values) -> dict:
    row = {
        "epoch": epoch,
        "train_loss": 0.5,
        "train_accuracy": 0.8,
        "val_loss": 0.6,
        "val_accuracy": val_accuracy,
        "lr": 0.001,
        "seconds": 1.5,
    }
    return {**row, **values}


def completed(best_val_accuracy: float, **values) -> dict:
    """A summary.json of a finished run; `values` set other summary metrics by their dotted name."""
    summary = {
        "status": "completed",
        "best": {"epoch": 2, "val_accuracy": best_val_accuracy, "val_loss": 0.3},
        "final": epoch_row(2, best_val_accuracy),
        "wall_seconds": 4.0,
        "epochs_completed": 2,
    }
    for name, value in values.items():
        *parents, last = name.split(".")
        node = summary
        for part in parents:
            node = node[part]
        node[last] = value
    return summary


def make_run(path: Path, summary=None, epochs=(), overrides=(), config=None) -> Path:
    """A run folder as `mnist train` leaves it. `summary`: a dict, or the raw text of summary.json;
    `epochs`: dicts, or raw lines of metrics.jsonl; `overrides`: a list, or raw bytes of overrides.yaml;
    `config`: a dict for .hydra/config.yaml (None: no such file)."""
    (path / ".hydra").mkdir(parents=True)
    if config is not None:
        OmegaConf.save(OmegaConf.create(config), path / ".hydra" / "config.yaml")
    if summary is not None:
        (path / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    lines = [e if isinstance(e, str) else json.dumps(e) for e in epochs]
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    text = overrides if isinstance(overrides, bytes) else "".join(f"- {o}\n" for o in overrides).encode() or b"[]\n"
    (path / ".hydra" / "overrides.yaml").write_bytes(text)
    return path


def two_good_runs(folder: Path) -> None:
    make_run(folder / "good-a", completed(0.9), [epoch_row(1, 0.8), epoch_row(2, 0.9)], ["model=mlp"])
    make_run(folder / "good-b", completed(0.8), [epoch_row(1, 0.7), epoch_row(2, 0.8)], ["model=cnn"])


def report_json(folder: Path, *args: str, env: dict) -> list:
    result = run_mnist("report", str(folder), "format=json", *args, cwd=folder, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)["rows"]


def overrides_dir(path: Path) -> None:
    (path / ".hydra" / "overrides.yaml").unlink()
    (path / ".hydra" / "overrides.yaml").mkdir()


ALIAS_BOMB = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
    b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((98 + i,) * 2 + (97 + i,) * 9) for i in range(24)
)

DAMAGE = {
    "summary is a list": (dict(summary="[]"), "summary.json is not a JSON object"),
    "summary is a string": (dict(summary='"x"'), "summary.json is not a JSON object"),
    "summary is empty": (dict(summary=""), "summary.json is empty"),
    "summary is cut off": (dict(summary='{"status": "compl'), "summary.json is not valid JSON"),
    "summary has no status": (dict(summary="{}"), "summary.json has no status"),
    "garbage line": (dict(epochs=[epoch_row(1), "}{ not json"]), "metrics.jsonl has 1 unreadable line(s)"),
    "no val_accuracy": (
        dict(epochs=[epoch_row(1), {"epoch": 2, "val_loss": 0.4}]),
        "metrics.jsonl epoch 2 has no val_accuracy number",
    ),
    "string val_accuracy": (dict(epochs=[epoch_row(1, "0.9")]), "metrics.jsonl epoch 1 has no val_accuracy number"),
    "overrides not UTF-8": (dict(overrides=b"- model=\xff\xfe\n"), ".hydra/overrides.yaml is not valid YAML"),
    "overrides a mapping": (dict(overrides=b"model: mlp\n"), ".hydra/overrides.yaml is not a list of overrides"),
    "overrides an alias bomb": (  # 9^25 items once expanded: read as is, the report would never end
        dict(overrides=ALIAS_BOMB),
        ".hydra/overrides.yaml holds YAML aliases, which Hydra never writes",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_is_a_row_that_says_why_and_the_others_are_ranked(damage, tmp_path, env):
    files, reason = DAMAGE[damage]
    two_good_runs(tmp_path)
    make_run(tmp_path / "broken", **{"summary": json.dumps(completed(0.85)), "epochs": [epoch_row(1)], **files})
    rows = report_json(tmp_path, env=env)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["run"] for r in rows if r["status"] == "completed"] == ["good-a", "good-b"]
    (broken,) = [r for r in rows if r["run"] == "broken"]
    assert broken["status"] == "damaged" and broken["error"] == reason


def test_unreadable_overrides_and_the_table_name_the_damage(tmp_path, env):
    two_good_runs(tmp_path)
    overrides_dir(make_run(tmp_path / "broken", completed(0.85), [epoch_row(1)]))
    result = run_mnist("report", str(tmp_path), cwd=tmp_path, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "broken (damaged): .hydra/overrides.yaml could not be read (Is a directory)" in result.stdout
    assert "good-a" in result.stdout and "good-b" in result.stdout


def test_a_damaged_run_is_left_out_of_the_plot(tmp_path, capsys):
    two_good_runs(tmp_path)
    make_run(tmp_path / "broken", epochs=[epoch_row(1), {"epoch": 2}])
    assert report.report_command([str(tmp_path), "plot=true"]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "broken (damaged)" in capsys.readouterr().out


@pytest.mark.parametrize("sort", [*metrics.SUMMARY_METRICS, *(m.column for m in metrics.SUMMARY_METRICS.values())])
def test_report_sorts_by_every_summary_metric_in_its_direction(sort, tmp_path, capsys):
    assert set(metrics.SUMMARY_METRICS) == set(LOWER_IS_BETTER), "give each new metric its direction here"
    values = {  # each metric orders the three runs differently from its neighbours
        "r0": {
            "best.val_accuracy": 0.90,
            "best.val_loss": 0.30,
            "final.val_accuracy": 0.85,
            "final.val_loss": 0.50,
            "final.train_accuracy": 0.97,
            "final.train_loss": 0.05,
            "wall_seconds": 30.0,
        },
        "r1": {
            "best.val_accuracy": 0.95,
            "best.val_loss": 0.40,
            "final.val_accuracy": 0.80,
            "final.val_loss": 0.60,
            "final.train_accuracy": 0.99,
            "final.train_loss": 0.02,
            "wall_seconds": 10.0,
        },
        "r2": {
            "best.val_accuracy": 0.85,
            "best.val_loss": 0.20,
            "final.val_accuracy": 0.90,
            "final.val_loss": 0.40,
            "final.train_accuracy": 0.95,
            "final.train_loss": 0.08,
            "wall_seconds": 20.0,
        },
    }
    for run, metric_values in values.items():
        make_run(tmp_path / run, completed(0.0, **metric_values), [epoch_row(1)])
    make_run(tmp_path / "r3", completed(0.0, **{name: None for name in LOWER_IS_BETTER}), [])  # no values: last
    name = (
        sort if sort in LOWER_IS_BETTER else next(m.name for m in metrics.SUMMARY_METRICS.values() if m.column == sort)
    )
    expected = sorted(values, key=lambda run: values[run][name], reverse=not LOWER_IS_BETTER[name]) + ["r3"]

    assert report.report_command([str(tmp_path), f"sort={sort}", "format=json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["run"] for r in rows] == expected


def test_sort_names_outside_the_metric_table_are_refused(tmp_path, env):
    result = run_mnist("report", str(tmp_path), "sort=val_loss", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "sort must be one of best_val_accuracy, best_val_loss" in result.stderr and "final.train_loss" in result.stderr
    )


def test_an_unfinished_run_is_scored_from_its_epochs(tmp_path):
    epochs = [
        epoch_row(1, 0.7, val_loss=0.9, seconds=1.0),
        epoch_row(2, 0.9, val_loss=0.5, seconds=2.0),
        epoch_row(3, 0.9, val_loss=0.4, train_loss=0.1, train_accuracy=0.95, seconds=3.0),
    ]
    make_run(tmp_path / "killed", epochs=epochs)
    (row,) = leaderboard.build(tmp_path, "final.train_loss")
    assert row["status"] == "unfinished" and row["error"] is None and row["epochs_done"] == 3
    assert (row["best_val_accuracy"], row["best_val_loss"]) == (0.9, 0.5)  # the first best epoch, as training keeps
    assert (row["final_val_loss"], row["final_train_loss"], row["final_train_accuracy"]) == (0.4, 0.1, 0.95)
    assert row["seconds"] == 6.0


def test_runs_with_the_same_overrides_are_told_apart_by_the_run_column(tmp_path, env):
    for name in ("job-alpha", "job-bravo"):
        make_run(tmp_path / name, completed(0.9), [epoch_row(1, 0.9)], ["model=mlp", "seed=1"])
    rows = report_json(tmp_path, env=env)
    assert sorted(r["run"] for r in rows) == ["job-alpha", "job-bravo"]
    table = run_mnist("report", str(tmp_path), "save=true", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    assert "job-alpha" in table.stdout and "job-bravo" in table.stdout
    saved = list(csv.DictReader((tmp_path / "leaderboard.csv").open()))
    assert sorted(r["run"] for r in saved) == ["job-alpha", "job-bravo"]  # relative to the csv's folder


def test_an_epochs_override_does_not_replace_the_epochs_done_column(tmp_path, env):
    make_run(
        tmp_path / "0",
        completed(0.9, epochs_completed=2, status="early_stopped"),
        [epoch_row(1), epoch_row(2, 0.9)],
        ["epochs=3"],
    )
    make_run(tmp_path / "1", completed(0.8, epochs_completed=5), [epoch_row(e, 0.8) for e in range(1, 6)], ["epochs=5"])
    rows = report_json(tmp_path, env=env)
    assert [(r["epochs"], r["epochs_done"]) for r in rows] == [("3", 2), ("5", 5)]


def test_no_train_config_key_is_named_like_a_leaderboard_column():
    keys = {f.name for f in dataclasses.fields(TrainConfig)} | {"experiment", "hparams_search"}
    assert not keys & {"rank", "run", "error", *leaderboard.COLUMNS}


def full_disk(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_save_keeps_the_old_leaderboard_and_names_the_path(tmp_path, monkeypatch, capsys):
    two_good_runs(tmp_path)
    old = b"rank,run\n1,somewhere\n"
    (tmp_path / "leaderboard.csv").write_bytes(old)
    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    assert report.report_command([str(tmp_path), "save=true"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'leaderboard.csv'} (No space left on device)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (tmp_path / "leaderboard.csv").read_bytes() == old
    assert not (tmp_path / "leaderboard.json").exists()


def test_the_sweep_end_leaderboard_ranks_by_any_optimized_metric_and_survives_damage(tmp_path, monkeypatch, capsys):
    two_good_runs(tmp_path)
    make_run(tmp_path / "broken", "[]", [epoch_row(1)])
    make_run(tmp_path / "good-c", completed(0.7, **{"final.train_loss": 0.01}), [epoch_row(1)])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "optimized_metric": "final.train_loss"})
    leaderboard.LeaderboardCallback().on_multirun_end(config)
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert board["sort"] == "final.train_loss" and [r["run"] for r in board["rows"]][:1] == ["good-c"]
    assert {r["run"]: r["status"] for r in board["rows"]}["broken"] == "damaged"

    before = (tmp_path / "leaderboard.csv").read_bytes()
    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    leaderboard.LeaderboardCallback().on_multirun_end(config)  # says so; does not raise
    assert "leaderboard.csv (No space left on device)" in capsys.readouterr().err
    assert (tmp_path / "leaderboard.csv").read_bytes() == before


def test_runs_that_differ_only_in_seed_are_one_row_with_mean_std_and_n(tmp_path, env):
    accuracies = {"mlp": (0.90, 0.92, 0.94), "cnn": (0.97, 0.98, 0.99)}
    for model, values in accuracies.items():
        for seed, value in enumerate(values):
            make_run(
                tmp_path / f"{model}-{seed}",
                completed(value),
                [epoch_row(1, value)],
                [f"model={model}", f"seed={seed}"],
            )
    make_run(tmp_path / "lone", completed(0.95), [epoch_row(1, 0.95)], ["model=lenet", "seed=0"])
    make_run(
        tmp_path / "mlp-3", {"status": "failed", "error": "x"}, [epoch_row(1, 0.1)], ["model=mlp", "seed=3"]
    )  # not averaged
    rows = report_json(tmp_path, env=env)
    assert [(r["model"], r["seed"], r["n"], r["status"]) for r in rows] == [
        ("cnn", "0,1,2", 3, "completed"),
        ("lenet", "0", 1, "completed"),
        ("mlp", "0,1,2", 3, "completed"),
        ("mlp", "3", 1, "failed"),
    ]
    cnn, lone, mlp, _ = rows
    assert cnn["best_val_accuracy"] == pytest.approx(0.98) and cnn["best_val_accuracy_std"] == pytest.approx(
        0.01
    )  # sample std
    assert mlp["best_val_accuracy"] == pytest.approx(0.92) and mlp["best_val_accuracy_std"] == pytest.approx(0.02)
    assert cnn["run"] == "cnn-0,cnn-1,cnn-2" and cnn["seconds"] == 4.0 and cnn["seconds_std"] == 0.0
    assert (lone["best_val_accuracy"], lone["best_val_accuracy_std"]) == (0.95, 0.0)
    table = run_mnist("report", str(tmp_path), cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    assert "8 runs (4 rows" in table.stdout and "0.9800 ± 0.0100" in table.stdout and "0.9200 ± 0.0200" in table.stdout
    ungrouped = report_json(tmp_path, "group_seeds=false", env=env)
    assert len(ungrouped) == 8 and "n" not in ungrouped[0]


def stored_config(seed: int, **values) -> dict:
    """A .hydra/config.yaml's keys as a run stores them; `values` replace top-level keys."""
    config = {
        "model": {"name": "mlp", "hidden": [64]},
        "optimizer": {"name": "adam", "lr": 0.002},
        "epochs": 1,
        "seed": seed,
        "precision": "fp32",
        "device": "cpu",
        "threads": None,
        "data": {"root": "/data", "limit": None},
    }
    return {**config, **values}


def test_a_resumed_longer_run_is_not_averaged_with_its_shorter_siblings(tmp_path, env):
    def seed_run(name, seed, accuracy, resumed_with=None, epochs=1, **config):
        summary = completed(accuracy, epochs=epochs, epochs_completed=epochs)
        if resumed_with is not None:  # started with epochs=1
            summary["resumed_with"] = [f"resume={tmp_path / name}", *resumed_with]
        started = 1 if resumed_with is not None else epochs
        make_run(
            tmp_path / name,
            summary,
            [epoch_row(1, accuracy)],
            [f"epochs={started}", f"seed={seed}"],
            stored_config(seed, epochs=started, **config),
        )

    for seed in range(3):  # a 1-epoch sweep over seeds, job 0 resumed with epochs=8
        seed_run(f"sweep/{seed}", seed, 0.9 + seed / 100, ["epochs=8"] if seed == 0 else None, 8 if seed == 0 else 1)
    seed_run("again/1", 1, 0.95, [], epochs=8)  # resumed twice: the second time without epochs=, still 8 epochs
    seed_run("again/2", 2, 0.96, ["epochs=8", "device=cuda"], epochs=8)  # on another device: the same experiment
    seed_run("stopped/3", 3, 0.92, [])  # interrupted and resumed as it was: the same as a run never stopped
    seed_run("longer/0", 0, 0.97, epochs=8)  # 8 epochs from the start: another lr schedule than 1 raised to 8
    seed_run("longer/1", 1, 0.98, epochs=8, threads=4, data={"root": "/elsewhere", "limit": None})
    seed_run("other-lr/0", 0, 0.5, optimizer={"name": "adam", "lr": 0.1})  # same overrides, another config
    rows = report_json(tmp_path, env=env)
    assert sorted((r["run"], r["epochs"], r["n"]) for r in rows) == [
        ("longer/0,longer/1", "8", 2),
        ("other-lr/0", "1", 1),
        ("sweep/0,again/1,again/2", "8", 3),
        ("sweep/1,sweep/2,stopped/3", "1", 3),
    ]


def test_the_keys_that_do_not_change_the_experiment_are_train_config_keys():
    for key in run_records.NOT_THE_EXPERIMENT:  # a renamed key would leave this list stale without a word
        node = TrainConfig
        if key.startswith("dataset."):  # `dataset` is typed by the option chosen: the image folder's
            node, key = FolderDatasetConfig, key.removeprefix("dataset.")
        for part in key.split("."):
            hints = typing.get_type_hints(node)
            assert part in hints, f"{key} is not a key of TrainConfig"
            node = hints[part]


def test_runs_in_a_folder_named_latest_are_found_and_the_latest_link_is_not_followed(tmp_path, env):
    make_run(tmp_path / "latest" / "kept", completed(0.9), [epoch_row(1, 0.9)])  # the user's own folder
    make_run(tmp_path / "train" / "2026-12-06" / "run", completed(0.8), [epoch_row(1, 0.8)])
    (tmp_path / "train" / "latest").symlink_to(Path("2026-12-06") / "run")  # what mnist train leaves
    rows = report_json(tmp_path, env=env)
    assert [r["run"] for r in rows] == ["latest/kept", "train/2026-12-06/run"]  # each run once
    (named,) = report_json(tmp_path / "train" / "latest", env=env)  # a link named on the command line is followed
    assert named["best_val_accuracy"] == 0.8


def test_ties_and_seed_lists_sort_as_numbers(tmp_path, env):
    for job in (2, 11, 24, 26, 8):
        make_run(tmp_path / "ties" / str(job), completed(0.9), [epoch_row(1, 0.9)], [f"model=m{job}"])
    assert [r["run"] for r in report_json(tmp_path / "ties", env=env)] == ["2", "8", "11", "24", "26"]
    for seed in (0, 1, 10, 11, 2):
        make_run(tmp_path / "seeds" / f"s{seed}", completed(0.9), [epoch_row(1, 0.9)], [f"seed={seed}"])
    (group,) = report_json(tmp_path / "seeds", env=env)
    assert (group["seed"], group["run"]) == ("0,1,2,10,11", "s0,s1,s2,s10,s11")


def test_a_run_resumed_once_in_bf16_is_not_averaged_with_siblings_resumed_only_for_more_epochs(tmp_path, env):
    def seed_run(name, seed, resumes, precision_in_config="fp32"):
        summary = completed(0.9 + seed / 100, epochs=3, epochs_completed=3)
        summary["resumes"] = [[f"resume={tmp_path / name}", *r] for r in resumes]
        summary["resumed_with"] = summary["resumes"][-1]  # only the last resume's, which alone hid the bf16 epochs
        config = stored_config(seed, epochs=1)
        config["precision"] = precision_in_config
        make_run(tmp_path / name, summary, [epoch_row(1, 0.9)], ["epochs=1", f"seed={seed}"], config)

    seed_run("sw/0", 0, [["precision=bf16", "epochs=2"], ["epochs=3"]])
    seed_run("sw/1", 1, [["epochs=3"]])
    seed_run("sw/2", 2, [["epochs=2"], ["epochs=3"]])
    seed_run("sw/3", 3, [["precision=bf16", "epochs=2"], ["precision=fp32", "epochs=3"]])  # bf16, then fp32 again
    rows = report_json(tmp_path, env=env)
    assert sorted((r["run"], r["n"]) for r in rows) == [("sw/0", 1), ("sw/1,sw/2", 2), ("sw/3", 1)]
