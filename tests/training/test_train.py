"""`mnist train` end to end: the real command in a subprocess, on synthetic IDX data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import QUICK, TRAIN_SIZE, run_mnist


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def mlp_run(workdir, cli_env):
    """One finished 2-epoch mlp run: (completed process, run folder)."""
    result = run_mnist("train", "model=mlp", "model.hidden=[64]", *QUICK, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return result, workdir / result.stdout.strip().splitlines()[-1]


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_folder_has_everything_later_commands_read(mlp_run, workdir):
    result, run_dir = mlp_run
    assert run_dir.is_dir()
    assert run_dir.relative_to(workdir / "outputs" / "train").parts[0].count("-") == 2  # <YYYY-MM-DD>/...
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "train.log",
        "model.txt",
        "metrics.jsonl",
        "metrics.csv",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert (workdir / "outputs" / "train" / "latest").resolve() == run_dir.resolve()
    assert "Linear" in (run_dir / "model.txt").read_text()
    assert "epoch 2/2" in (run_dir / "train.log").read_text()


def test_metrics_are_logged_per_epoch_and_beat_chance(mlp_run):
    _, run_dir = mlp_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    with open(run_dir / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [float(r["val_accuracy"]) for r in csv_rows] == [r["val_accuracy"] for r in rows]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == 2
    assert summary["best"]["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert summary["best"]["val_accuracy"] >= 0.6  # 10 classes: chance is 0.1


def test_checkpoints_load_with_weights_only_and_hold_the_run(mlp_run):
    _, run_dir = mlp_run
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 2
    assert best["metrics"]["val_accuracy"] == best["best"]["val_accuracy"]
    for key in ("model", "optimizer", "history", "config", "classes", "normalization", "versions"):
        assert key in last, key
    assert last["config"]["model"]["name"] == "mlp"
    assert last["classes"] == [str(i) for i in range(10)]
    assert last["versions"]["torch"] == str(torch.__version__)

    from omegaconf import OmegaConf

    from mnist_cli.training.models import build_model

    model = build_model(OmegaConf.create(last["config"]["model"]), num_classes=10)
    model.load_state_dict(last["model"])  # the weights fit the model the config describes


def test_same_seed_gives_identical_metrics(mlp_run, workdir, cli_env):
    _, first = mlp_run
    again = run_mnist("train", "model=mlp", "model.hidden=[64]", *QUICK, cwd=workdir, env=cli_env)
    assert again.returncode == 0, again.stderr
    second = workdir / again.stdout.strip().splitlines()[-1]
    assert second != first  # a new run folder, even within the same second

    def without_time(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert without_time(read_jsonl(first / "metrics.jsonl")) == without_time(read_jsonl(second / "metrics.jsonl"))


@pytest.mark.slow
def test_bf16_precision_trains_as_well_and_is_really_applied(mlp_run, workdir, cli_env):
    _, fp32_run = mlp_run
    result = run_mnist("train", "model=mlp", "model.hidden=[64]", "precision=bf16", *QUICK, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "bf16" in result.stdout
    bf16_run = workdir / result.stdout.strip().splitlines()[-1]
    fp32_rows, bf16_rows = read_jsonl(fp32_run / "metrics.jsonl"), read_jsonl(bf16_run / "metrics.jsonl")
    assert [r["train_loss"] for r in bf16_rows] != [
        r["train_loss"] for r in fp32_rows
    ]  # autocast changed the arithmetic
    assert bf16_rows[-1]["val_accuracy"] >= fp32_rows[-1]["val_accuracy"] - 0.05
    tested = run_mnist("eval", f"run={bf16_run}", "device=cpu", cwd=workdir, env=cli_env)  # weights stay fp32
    assert tested.returncode == 0, tested.stderr


def test_fashion_mnist_cnn_with_uncompressed_idx_files(workdir, cli_env):
    result = run_mnist(
        "train", "dataset=fashion_mnist", "model=cnn", "scheduler=cosine", *QUICK, cwd=workdir, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((workdir / result.stdout.strip().splitlines()[-1] / "summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist"
    assert summary["best"]["val_accuracy"] >= 0.3


def test_data_limit_uses_only_the_first_images(workdir, cli_env):
    result = run_mnist(
        "train", "model=lenet", "data.limit=300", "epochs=1", "data.val_size=50", cwd=workdir, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert "250 train / 50 val images" in result.stdout
    assert str(TRAIN_SIZE - 100) not in result.stdout


def test_cfg_job_prints_the_composed_config_without_training(workdir, cli_env):
    before = set((workdir / "outputs").glob("train/*/*"))
    result = run_mnist(
        "train", "--cfg", "job", "model=lenet", "optimizer=sgd", "optimizer.lr=0.05", cwd=workdir, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert "name: lenet" in result.stdout and "name: sgd" in result.stdout and "lr: 0.05" in result.stdout
    assert set((workdir / "outputs").glob("train/*/*")) == before  # --cfg job creates no run folder


@pytest.mark.slow
def test_multirun_runs_every_combination(workdir, cli_env):
    result = run_mnist(
        "train",
        "-m",
        "model=mlp,lenet",
        "epochs=1",
        "data.limit=200",
        "data.val_size=50",
        "model.augment=false",
        cwd=workdir,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    summaries = sorted((workdir / "outputs" / "multirun").glob("*/*/*/summary.json"))
    assert sorted(json.loads(p.read_text())["model"] for p in summaries) == ["lenet", "mlp"]


def test_help_lists_commands_and_groups_without_importing_torch(workdir, cli_env):
    import subprocess
    import sys

    probe = (
        "import sys; from mnist_cli.cli.main import main; "
        "codes = [main(['--help']), main(['train', '--help'])]; "
        "print(codes, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=workdir, env=cli_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[0, 0] False")
    for text in (
        "train",
        "eval",
        "predict",
        "model: cnn, lenet, mlp",
        "optimizer: adadelta, adagrad, adam, adamw, rmsprop, sgd",
        "scheduler: cosine, none, onecycle, step",
        "dataset: emnist, fashion_mnist, folder, kmnist, mnist, qmnist",
    ):
        assert text in result.stdout, text
