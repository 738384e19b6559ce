"""hparams_search=optuna: our Hydra sweeper over a saved Optuna study. Killed and run again, shared by
two processes, pruning a hopeless trial, minimising a loss, under the joblib launcher."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run_mnist, start_mnist

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed: pip install -e '.[optuna]'")
from optuna.trial import TrialState  # noqa: E402

from mnist_cli.runs.locks import exclusive  # noqa: E402
from mnist_cli.search import study as studies  # noqa: E402

TINY = ["epochs=1", "data.limit=300", "data.val_size=60", "batch_size=60", "model.augment=false", "device=cpu"]
SEARCH = ["hparams_search=optuna", *TINY]


def sweep_dirs(workdir: Path) -> list:
    return sorted(p for p in (workdir / "outputs" / "multirun").glob("*/*") if p.is_dir())


def the_study(workdir: Path, name: str | None = None) -> optuna.Study:
    """The study saved under workdir/outputs/optuna (the only one there, unless named)."""
    if name is None:
        (database,) = (workdir / "outputs" / "optuna").glob("*.db")
        name = database.stem
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'outputs' / 'optuna' / f'{name}.db'}")


def states(study: optuna.Study) -> dict:
    return {
        state.name: sum(t.state == state for t in study.trials)
        for state in TrialState
        if any(t.state == state for t in study.trials)
    }


def jobs_in(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.slow
def test_a_search_saves_its_study_and_names_the_leaderboards_top_row_best(tmp_path, cli_env):
    result = run_mnist("train", *SEARCH, "hydra.sweeper.n_trials=3", "epochs=2", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    (folder,) = sweep_dirs(tmp_path)
    assert jobs_in(folder) == ["0", "1", "2"]
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 3}
    for trial in study.trials:  # every epoch was reported to the study from inside the job
        assert sorted(trial.intermediate_values) == [1, 2]
        assert (
            trial.value
            == json.loads((Path(trial.user_attrs["run"]) / "summary.json").read_text())["best"]["val_accuracy"]
        )
    results = (folder / "optimization_results.yaml").read_text()
    top = json.loads((folder / "leaderboard.json").read_text())["rows"][0]
    assert f"best_run: {folder / top['run']}" in results and f"best_value: {top['best_val_accuracy']}" in results
    assert "optimizer.lr:" in results and "outputs/optuna/" in result.stdout  # where the study is, said at the start


@pytest.mark.slow
def test_optuna_minimises_a_loss(tmp_path, cli_env):
    result = run_mnist(
        "train", *SEARCH, "optimized_metric=best.val_loss", "hydra.sweeper.n_trials=3", cwd=tmp_path, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    (folder,) = sweep_dirs(tmp_path)
    losses = [r["best_val_loss"] for r in json.loads((folder / "leaderboard.json").read_text())["rows"]]
    assert len(losses) == 3 and losses == sorted(losses)  # the lowest loss ranks first
    assert f"best_value: {losses[0]}" in (folder / "optimization_results.yaml").read_text()  # not the highest
    assert the_study(tmp_path).direction == optuna.study.StudyDirection.MINIMIZE


def complete_trials(workdir: Path) -> int:
    """How many trials of the study are complete; 0 while the sweep is still creating its database.
    Read under the study's lock, as a worker would: Optuna creates missing tables when it opens a
    database, and doing that beside the sweep's own creation fails one of the two."""
    try:
        (database,) = (workdir / "outputs" / "optuna").glob("*.db")
        with exclusive(studies.lock_path(f"sqlite:///{database}")):
            return states(the_study(workdir)).get("COMPLETE", 0)
    except Exception:
        return 0


@pytest.mark.slow
def test_a_killed_search_continues_its_study_on_the_same_command(tmp_path, cli_env):
    command = ["train", *SEARCH, "hydra.sweeper.n_trials=4", "epochs=3"]
    first = start_mnist(*command, cwd=tmp_path, env=cli_env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 as soon as two trials are in the study
        if list((tmp_path / "outputs" / "optuna").glob("*.db")) and complete_trials(tmp_path) >= 2:
            break
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert states(the_study(tmp_path)).get("COMPLETE") == 2

    again = run_mnist(*command, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0, again.stderr
    study = the_study(tmp_path)
    assert states(study).get("COMPLETE") == 4 and "RUNNING" not in states(study) and "WAITING" not in states(study)
    killed, rerun = sweep_dirs(tmp_path)
    assert len(jobs_in(rerun)) == 2  # two new trials, not four
    runs = [t.user_attrs["run"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(set(runs)) == 4 and sum(r.startswith(str(rerun)) for r in runs) == 2
    for trial in study.trials:  # the trial the kill stopped is not counted: its parameters ran again
        if trial.state == TrialState.FAIL:
            (retry,) = [t for t in study.trials if t.user_attrs.get(studies.RETRY_OF) == trial.number]
            assert retry.params == trial.params and retry.state == TrialState.COMPLETE


@pytest.mark.slow
def test_two_processes_share_one_study_and_run_exactly_n_trials(tmp_path, cli_env):
    command = ["train", *SEARCH, "hydra.sweeper.n_trials=6"]
    workers = [start_mnist(*command, cwd=tmp_path, env=cli_env) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 6}
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6  # no point drawn twice
    folders = sweep_dirs(tmp_path)
    assert len(folders) == 2 and sum(len(jobs_in(f)) for f in folders) == 6
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both worked on it


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_after_its_first_epoch(tmp_path, cli_env):
    # Two good trials, then one whose learning rate cannot learn anything in 3 epochs, queued in this order.
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    for lr in (0.003, 0.003, 1e-9):
        study.enqueue_trial({"optimizer.lr": lr})
    result = run_mnist(
        "train",
        *SEARCH,
        "epochs=3",
        "batch_size=60",
        "optimizer.weight_decay=0",
        "model.hidden=64",
        "optimizer.lr=choice(0.003,0.000000001)",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=prune",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.startup_trials=2",
        "hydra.sweeper.warmup_epochs=0",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    hopeless = Path(trials[2].user_attrs["run"])
    summary = json.loads((hopeless / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_completed"] == 1 and summary["epochs"] == 3
    assert "pruned after epoch 1" in result.stdout
    (folder,) = sweep_dirs(tmp_path)
    rows = json.loads((folder / "leaderboard.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["completed", "completed", "pruned"]


@pytest.mark.slow
def test_the_joblib_launcher_runs_two_trials_at_once_and_prunes_from_its_workers(tmp_path, cli_env):
    result = run_mnist(
        "train",
        *SEARCH,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "epochs=2",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 4}
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # reported from the joblib workers
    starts = sorted(t.datetime_start for t in study.trials)
    assert starts[1] < min(t.datetime_complete for t in study.trials)  # two trials were asked before either ended
    (folder,) = sweep_dirs(tmp_path)
    assert {json.loads((folder / j / "summary.json").read_text())["threads"] for j in jobs_in(folder)} == {1}


@pytest.mark.parametrize(
    "args,message",
    [
        (["hydra.sweeper.pruner=sometimes"], "hydra.sweeper.pruner must be one of median, hyperband, none"),
        (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials must be a positive whole number"),
        (["optimizer.lr=interval(0.1,0.01)"], "optimizer.lr: optimizer.lr=interval(0.1,0.01) is not a search range"),
        (["hydra.sweeper.storage=nosuchdb://x"], "the Optuna storage nosuchdb://x cannot be opened"),
        (["optimizer.lr=-1"], "optimizer.lr must be greater than 0"),
        (["hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler"], "hydra.sweeper.sampler cannot be made"),
        (
            ["hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler"],
            "needs ~hydra.sweeper.sampler.constant_liar",
        ),
        (["batch_size=choice(64,abc)"], "the searched value batch_size=abc does not fit the config"),
        (
            ["optimized_metric=best.val_loss", "hydra.sweeper.direction=maximize"],
            "contradicts optimized_metric=best.val_loss",
        ),
        (["hydra.sweeper.storage=sqlite:///:memory:"], "an in-memory SQLite database cannot be shared"),
    ],
)
def test_a_mistake_in_the_search_is_one_sentence_before_any_trial(args, message, tmp_path, cli_env):
    result = run_mnist("train", *SEARCH, *args, cwd=tmp_path, env=cli_env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not any(p.is_dir() for f in sweep_dirs(tmp_path) for p in f.iterdir())  # no trial ran


def test_a_random_sampler_without_constant_liar_runs(tmp_path, cli_env):
    result = run_mnist(
        "train",
        *SEARCH,
        "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
        "~hydra.sweeper.sampler.constant_liar",
        "hydra.sweeper.n_trials=1",
        "model.hidden=16",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert states(the_study(tmp_path)) == {"COMPLETE": 1}


def test_values_that_clash_with_each_other_fail_their_trial_before_it_starts(tmp_path, cli_env):
    # each value fits alone; together mlp's hidden sizes (a list) meet an int
    result = run_mnist(
        "train",
        *SEARCH,
        "model=choice(mlp)",
        "model.hidden=choice(64)",
        "hydra.sweeper.n_trials=2",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert states(the_study(tmp_path)) == {"FAIL": 2}  # counted: the sweep ends, nothing is queued again
    output = result.stderr + result.stdout
    assert re.search(r"trial 0 \(.*model.hidden=64 model=mlp\) failed before it started: model.hidden=64: ", output), (
        output
    )
    assert "Traceback" not in output and "already has its" not in output
    assert not any(p.is_dir() for f in sweep_dirs(tmp_path) for p in f.iterdir())  # no job ran


@pytest.mark.slow
def test_a_trial_too_big_for_memory_is_failed_with_one_sentence_and_the_search_goes_on(tmp_path, cli_env):
    # a width no machine can allocate: torch raises inside the job, and the job says so in one sentence
    result = run_mnist(
        "train", *SEARCH, "model.hidden=choice(100000000000)", "hydra.sweeper.n_trials=2", cwd=tmp_path, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    output = result.stderr + result.stdout
    assert "Traceback" not in output
    assert result.stderr.count("cpu ran out of memory: model=cnn with these sizes has") == 2
    study = the_study(tmp_path)
    assert states(study) == {"FAIL": 2}  # not queued again: it would fail the same way
    (folder,) = sweep_dirs(tmp_path)
    for job in jobs_in(folder):
        summary = json.loads((folder / job / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["error"].startswith("cpu ran out of memory")


def test_storage_locations_are_absolute_and_shown_without_passwords(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert studies.absolute_location("sqlite:///studies/a.db") == f"sqlite:///{tmp_path / 'studies' / 'a.db'}"
    assert studies.absolute_location("studies/a.log") == str(tmp_path / "studies" / "a.log")
    assert studies.absolute_location("postgresql://u:pw@db/optuna") == "postgresql://u:pw@db/optuna"
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="in-memory"):
            studies.absolute_location(memory)
    assert "s3cret" not in studies.shown("postgresql://me:s3cret@db.example/optuna")
    assert studies.shown("postgresql://me:s3cret@db.example/optuna").startswith("postgresql://me:***@db.example")


def test_a_grid_sampler_ends_the_search_when_its_grid_is_done():
    from mnist_cli.search.optuna_internals import tell
    from mnist_cli.search.sweep import exhausted

    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2]}))
    distributions = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
    for _ in range(2):
        trial = study.ask(distributions)
        tell(study, trial.number, 1.0)  # the grid's study.stop() outside optimize() is not an error
    assert states(study) == {"COMPLETE": 2} and exhausted(study)


def test_a_named_study_refuses_a_command_with_other_settings(tmp_path, cli_env):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="mine", storage=storage)
    study.set_user_attr(studies.SETUP, ["model=mlp"])
    result = run_mnist(
        "train", *SEARCH, "hydra.sweeper.study_name=mine", f"hydra.sweeper.storage={storage}", cwd=tmp_path, env=cli_env
    )
    assert (
        result.returncode == 2 and "study mine in" in result.stderr and "was made with other settings" in result.stderr
    )
    assert len(optuna.load_study(study_name="mine", storage=storage).trials) == 0


def test_trials_whose_worker_is_gone_are_found_and_rerun_once():
    study = optuna.create_study()
    dead_here, reused_pid, silent_elsewhere, alive = (study.ask() for _ in range(4))
    for trial in (dead_here, reused_pid, silent_elsewhere, alive):
        trial.suggest_float("x", 0, 1)
    host = socket.gethostname()
    studies.claim(study, alive)
    alive.set_user_attr(studies.ALIVE, time.time() - studies.STALE_SECONDS - 1)  # silent, but its process runs
    dead_here.set_user_attr(studies.WORKER, f"{host} 999999999 12345")  # no such PID
    dead_here.set_user_attr(studies.ALIVE, time.time())
    reused_pid.set_user_attr(studies.WORKER, f"{host} {os.getpid()} 1")  # this PID, but another process's start
    reused_pid.set_user_attr(studies.ALIVE, time.time())
    silent_elsewhere.set_user_attr(studies.WORKER, "another-host 1 1")
    silent_elsewhere.set_user_attr(studies.ALIVE, time.time() - studies.STALE_SECONDS - 1)
    gone = studies.abandoned(study)
    assert [t.number for t in gone] == [dead_here.number, reused_pid.number, silent_elsewhere.number]
    for trial in gone:
        studies.stop_trial(study, trial.number, "test")
    assert studies.counted(study.trials) == 1  # only the live one; the three reruns wait
    rerun = study.ask(
        {"x": optuna.distributions.FloatDistribution(0, 1)}
    )  # the first queued rerun: the same parameters
    assert rerun.params == dead_here.params and rerun.user_attrs[studies.RETRY_OF] == dead_here.number
    assert studies.counted(study.trials) == 2
    studies.stop_trial(study, rerun.number, "test")  # stopped again: not queued a third time
    assert sum(t.state == TrialState.WAITING for t in study.trials) == 2


@pytest.mark.slow
def test_the_submitit_local_launcher_runs_trials_that_report_to_the_study(tmp_path, cli_env):
    result = run_mnist(
        "train",
        *SEARCH,
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=2",
        "epochs=2",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    study = the_study(tmp_path)
    assert states(study) == {"COMPLETE": 2}
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # from submitit's own processes


@pytest.mark.slow
def test_optuna_dashboard_serves_a_saved_study_offline(tmp_path, cli_env):
    pytest.importorskip(
        "optuna_dashboard", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'"
    )
    result = run_mnist("train", *SEARCH, "hydra.sweeper.n_trials=1", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    (database,) = (tmp_path / "outputs" / "optuna").glob("*.db")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("optuna-dashboard")),
            f"sqlite:///outputs/optuna/{database.name}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, listed = time.time() + 60, None
        while listed is None and time.time() < deadline and dashboard.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    listed = json.loads(response.read())
            except OSError:
                time.sleep(0.2)
        assert listed is not None, (
            dashboard.stderr.read().decode() if dashboard.poll() is not None else "no answer in 60 s"
        )
        (shown,) = listed["study_summaries"]
        assert shown["study_name"] == database.stem
    finally:
        dashboard.kill()
        dashboard.wait()


@pytest.mark.slow
@pytest.mark.parametrize("offset", [40960, 81920])
def test_a_study_file_damaged_past_its_header_is_one_sentence_and_no_empty_sweep_folder(offset, tmp_path, cli_env):
    result = run_mnist("train", *SEARCH, "hydra.sweeper.n_trials=2", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    (database,) = (tmp_path / "outputs" / "optuna").glob("*.db")
    good = database.read_bytes()
    assert len(good) > offset
    with open(database, "r+b") as f:  # a page past SQLite's header and schema: the study opens, then fails
        f.seek(offset)
        f.write(os.urandom(4096))
    result = run_mnist("train", *SEARCH, "hydra.sweeper.n_trials=4", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{database} is damaged (database disk image is malformed); move it away" in result.stderr
    assert len(sweep_dirs(tmp_path)) == 1  # the first search's folder only
