"""logger=tensorboard / logger=mlflow: what a user sees in TensorBoard and in the MLflow store is what the
run folder says. Event files are read back with TensorBoard's own reader, the MLflow store with
mlflow.search_runs; a resumed run continues its MLflow run; a logger that fails never stops training."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from conftest import run_mnist, start_mnist

tensorboard = pytest.importorskip(
    "tensorboard", reason="the tensorboard extra is not installed: pip install -e '.[tensorboard]'"
)
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from mnist_cli.training.loggers import EPOCH_SCALARS, flat, write_hparams  # noqa: E402

# 240 training images in batches of 30: 8 steps per epoch
TINY = ["model=mlp", "model.hidden=[32]", "data.limit=300", "data.val_size=60", "batch_size=30", "device=cpu"]
STEPS_PER_EPOCH = 8


def run_folder(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def epochs(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def mlflow_runs(workdir: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_hparams_are_written_through_the_summary_writers_own_file_writer(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    changed = f"torch.utils.tensorboard (torch {torch.__version__}) no longer has SummaryWriter._get_file_writer()"
    with SummaryWriter(str(tmp_path)) as writer:
        assert callable(getattr(writer, "_get_file_writer", None)), f"{changed}; update training/loggers.write_hparams"
        write_hparams(writer, {"lr": 0.1, "model": "mlp"}, {"hparam/best_val_accuracy": 0.9})
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [], "write_hparams made a folder of its own"
    assert "_hparams_/session_start_info" in scalars(tmp_path).PluginTagToContent("hparams"), (
        f"{changed}.add_summary that writes the HParams records; update training/loggers.write_hparams"
    )


def test_each_logger_is_installed_by_the_extra_of_its_name():
    """The warning for a missing package says pip install 'mnist-cli[<logger>]': each logger has that extra."""
    from importlib.metadata import metadata

    extras = set(metadata("mnist-cli").get_all("Provides-Extra"))
    loggers = {p.stem for p in (Path(__file__).parents[2] / "conf" / "logger").glob("*.yaml")} - {"csv"}
    assert loggers and loggers <= extras, sorted(loggers - extras)


@pytest.mark.slow
def test_tensorboard_shows_every_epoch_scalar_of_metrics_jsonl_and_evals_pictures(tmp_path, cli_env):
    result = run_mnist(
        "train",
        *TINY,
        "epochs=2",
        "ema_decay=0.9",
        "logger=tensorboard",
        "logger.tensorboard.log_every_n_steps=4",
        cwd=tmp_path,
        env=cli_env,
    )  # with the weight average, whose columns are scalars too
    assert result.returncode == 0, result.stderr
    run = run_folder(result)
    rows = epochs(run)
    events = scalars(run / "tb")
    for tag, column in EPOCH_SCALARS.items():  # every epoch's value, at the global step that ended the epoch
        points = events.Scalars(tag)
        assert [p.step for p in points] == [row["epoch"] * STEPS_PER_EPOCH for row in rows], tag
        assert [p.value for p in points] == pytest.approx([row[column] for row in rows], rel=1e-6), (
            tag
        )  # float32 in the file
    assert [p.step for p in events.Scalars("train/step_loss")] == [4, 8, 12, 16]
    summary = json.loads((run / "summary.json").read_text())
    assert events.Scalars("hparam/best_val_accuracy")[-1].value == pytest.approx(
        summary["best"]["val_accuracy"], rel=1e-6
    )
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the HParams tab

    evaluated = run_mnist("eval", f"run={run}", "format=json", cwd=tmp_path, env=cli_env)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    events = scalars(run / "tb" / "eval")
    assert events.Scalars("eval/test_accuracy")[-1].value == pytest.approx(report["accuracy"], rel=1e-6)
    assert sorted(events.Tags()["images"]) == ["eval/test_calibration", "eval/test_confusion", "eval/test_errors"]


@pytest.mark.slow
def test_the_mlflow_store_holds_the_runs_config_metrics_and_files(tmp_path, cli_env):
    result = run_mnist("train", *TINY, "epochs=2", "ema_decay=0.9", "logger=mlflow", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "INFO" not in result.stderr  # MLflow's own start-up chatter stays off the screen
    run = run_folder(result)
    (found,) = mlflow_runs(tmp_path, "mnist")  # the experiment is named after the dataset
    config = json.loads(json.dumps(__import__("yaml").safe_load((run / ".hydra" / "config.yaml").read_text())))
    assert found.data.params["optimizer.lr"] == str(config["optimizer"]["lr"])
    assert set(found.data.params) == set(flat(config))
    assert found.data.tags["status"] == "completed" and found.data.tags["run_folder"] == str(run)
    assert found.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for column in ("val_accuracy", "trained_val_accuracy", "ema_val_accuracy"):
        history = client.get_metric_history(found.info.run_id, column)
        assert [(m.step, m.value) for m in history] == [(row["epoch"], row[column]) for row in epochs(run)], column
    summary = json.loads((run / "summary.json").read_text())
    assert found.data.metrics["best_val_accuracy"] == summary["best"]["val_accuracy"]
    artifacts = Path(client.download_artifacts(found.info.run_id, "", str(tmp_path / "artifacts")))
    assert (artifacts / "summary.json").read_bytes() == (run / "summary.json").read_bytes()
    assert (artifacts / "checkpoints" / "best.pt").read_bytes() == (run / "checkpoints" / "best.pt").read_bytes()

    evaluated = run_mnist("eval", f"run={run}", "format=json", cwd=tmp_path, env=cli_env)
    assert evaluated.returncode == 0, evaluated.stderr
    (found,) = mlflow_runs(tmp_path, "mnist")  # the same MLflow run, not a second one
    assert found.data.metrics["eval/test_accuracy"] == json.loads(evaluated.stdout)["accuracy"]
    assert sorted(a.path for a in client.list_artifacts(found.info.run_id, "eval")) == [
        "eval/test.json",
        "eval/test_calibration.png",
        "eval/test_confusion.png",
        "eval/test_errors.png",
    ]


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_and_its_tensorboard_curves(tmp_path, cli_env):
    first = run_mnist("train", *TINY, "epochs=1", "logger=[tensorboard,mlflow]", cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    run = run_folder(first)
    more = run_mnist("train", f"resume={run}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert more.returncode == 0, more.stderr
    rows = epochs(run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    (found,) = mlflow_runs(tmp_path, "mnist")
    assert found.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(found.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (row["epoch"], row["val_accuracy"]) for row in rows
    ]  # each epoch once
    points = scalars(run / "tb").Scalars("val/accuracy")
    assert [(p.step, p.value) for p in points] == [
        (r["epoch"] * STEPS_PER_EPOCH, pytest.approx(r["val_accuracy"], rel=1e-6)) for r in rows
    ]


@pytest.mark.slow
def test_a_logger_that_fails_is_one_warning_and_training_goes_on(tmp_path, cli_env):
    unreachable = "sqlite:////proc/no-such-folder/mlflow.db"  # nothing can be created under /proc
    result = run_mnist(
        "train",
        *TINY,
        "epochs=1",
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={unreachable}",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "logger failed" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the mlflow logger failed (")
    assert warnings[0].endswith("training goes on without it.") and "Traceback" not in result.stderr
    run = run_folder(result)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert [p.step for p in scalars(run / "tb").Scalars("epoch")] == [STEPS_PER_EPOCH]  # the other logger kept going


@pytest.mark.slow
def test_a_sweeps_jobs_share_one_mlflow_experiment_and_each_has_its_event_files(tmp_path, cli_env):
    result = run_mnist(
        "train",
        "-m",
        *TINY,
        "epochs=1",
        "model.hidden=[16],[32]",
        "seed=0,1",
        "logger=[tensorboard,mlflow]",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(jobs) == 4
    found = mlflow_runs(tmp_path, f"mnist sweep {sweep.parent.name}/{sweep.name}")
    assert sorted(r.data.tags["run_folder"] for r in found) == [str(job) for job in jobs]
    for job in jobs:
        (mine,) = [r for r in found if r.data.tags["run_folder"] == str(job)]
        best = json.loads((job / "summary.json").read_text())["best"]["val_accuracy"]
        assert mine.data.metrics["best_val_accuracy"] == best
        assert scalars(job / "tb").Scalars("hparam/best_val_accuracy")[-1].value == pytest.approx(best, rel=1e-6)


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_each_point_appears_once(tmp_path, cli_env):
    process = start_mnist(
        "train",
        *TINY,
        "epochs=8",
        "checkpoint.every_n_steps=3",
        "logger=[tensorboard,mlflow]",
        "logger.tensorboard.log_every_n_steps=1",
        cwd=tmp_path,
        env=cli_env,
    )
    latest = tmp_path / "outputs" / "train" / "latest"
    while process.poll() is None and len(epochs_if_any(latest)) < 3:  # into the fourth epoch, then kill -9
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    run = latest.resolve()
    resumed = run_mnist("train", f"resume={run}", cwd=tmp_path, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    rows = epochs(run)
    assert [row["epoch"] for row in rows] == list(range(1, 9))
    events = scalars(run / "tb")
    assert [p.step for p in events.Scalars("val/accuracy")] == [row["epoch"] * STEPS_PER_EPOCH for row in rows]
    assert [p.step for p in events.Scalars("train/step_loss")] == list(range(1, 8 * STEPS_PER_EPOCH + 1))
    (found,) = mlflow_runs(tmp_path, "mnist")
    history = mlflow.MlflowClient().get_metric_history(found.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(row["epoch"], row["val_accuracy"]) for row in rows]


def epochs_if_any(run: Path) -> list:
    try:
        return epochs(run)
    except (OSError, ValueError):
        return []


@pytest.mark.slow
def test_a_resumed_run_whose_mlflow_run_is_lost_starts_one_with_every_epoch(tmp_path, cli_env):
    first = run_mnist("train", *TINY, "epochs=2", "logger=mlflow", cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    run = run_folder(first)
    (run / "loggers.json").write_text("garbage{")
    more = run_mnist("train", f"resume={run}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert more.returncode == 0, more.stderr
    assert "does not name an MLflow run; this run's earlier MLflow history cannot be added to." in more.stderr
    runs = mlflow_runs(tmp_path, "mnist")
    assert len(runs) == 2
    (new,) = [r for r in runs if r.info.run_id == json.loads((run / "loggers.json").read_text())["mlflow"]["run_id"]]
    history = mlflow.MlflowClient().get_metric_history(new.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(row["epoch"], row["val_accuracy"]) for row in epochs(run)]  # all 3
