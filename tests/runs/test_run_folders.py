"""Run folders a user can trust: one writer at a time, no torn files, resume that really trains,
no stray folders, and one sentence for every failure (mistakes in the command line: test_bad_input.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from conftest import MNIST_COMMAND, run_mnist, start_mnist
from mnist_cli.config.schema import register_configs
from mnist_cli.errors import WriteFailed
from mnist_cli.runs import atomic, checkpoints, metrics
from mnist_cli.runs.atomic import write_json
from mnist_cli.runs.folder import RunFolder
from mnist_cli.runs.resume import RunStart
from mnist_cli.training.optim import build_optimizer, load_optimizer_state, scheduler_at

SMALL = ["model=mlp", "model.hidden=[32]", "data.val_size=100", "batch_size=50", "device=cpu", "threads=1"]


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1]


def epochs_of(run_dir: Path) -> list:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def files_of(folder: Path) -> dict:
    return {
        p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p != RunFolder(folder).lock
    }


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runfolders")


@pytest.fixture(scope="module")
def finished(workdir, cli_env) -> Path:
    """A finished 2-epoch run (never modified: tests copy it)."""
    result = run_mnist("train", *SMALL, "epochs=2", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / last_line(result)


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(RunFolder(run_dir).lock.name))
    return copy


# ---- 1. raising epochs on resume trains on a schedule of the new length --------------------------


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle"])
def test_a_rebuilt_schedule_matches_a_fresh_run_of_the_new_length_at_every_step(scheduler):
    register_configs()
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"scheduler={scheduler}", "optimizer=sgd", "scheduler.step_epochs=1"]
            if scheduler == "step"
            else [f"scheduler={scheduler}", "optimizer=sgd"],
        )
    steps, short, long = 5, 2, 6  # 5 steps an epoch; trained 2 epochs, resumed to 6

    def hyper(optimizer):
        group = optimizer.param_groups[0]
        return group["lr"], group.get("momentum")

    def train_steps(optimizer, scheduler_, n, record):
        for _ in range(n):
            optimizer.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            record.append(hyper(optimizer))
            optimizer.step()
            if scheduler_ is not None:
                scheduler_.step()

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    fresh = build_optimizer(model.parameters(), cfg.optimizer)
    expected: list = []
    train_steps(fresh, scheduler_at(fresh, cfg.scheduler, steps, long, 0), steps * long, expected)

    first = build_optimizer(model.parameters(), cfg.optimizer)
    seen: list = []
    train_steps(first, scheduler_at(first, cfg.scheduler, steps, short, 0), steps * short, seen)
    resumed = build_optimizer(model.parameters(), cfg.optimizer)
    schedule = scheduler_at(resumed, cfg.scheduler, steps, long, steps * short)
    load_optimizer_state(resumed, first.state_dict())
    after: list = []
    train_steps(resumed, schedule, steps * (long - short), after)
    assert after == expected[steps * short :]
    assert resumed.state_dict()["state"][0]["momentum_buffer"] is not None  # the optimizer's own state came back


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_resume_with_more_epochs_trains_on_the_new_schedule(scheduler, workdir, tmp_path, cli_env):
    short = run_mnist("train", *SMALL, f"scheduler={scheduler}", "epochs=1", cwd=tmp_path, env=cli_env)
    assert short.returncode == 0, short.stderr
    run_dir = tmp_path / last_line(short)
    weights_before = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    longer = run_mnist("train", f"resume={run_dir}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert longer.returncode == 0, longer.stderr
    fresh = run_mnist("train", *SMALL, f"scheduler={scheduler}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert fresh.returncode == 0, fresh.stderr

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / last_line(fresh) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows[1:]] == [r["lr"] for r in reference[1:]]  # the 3-epoch curve, from epoch 2 on
    assert rows[1]["lr"] > 0 and rows[2]["val_loss"] != rows[0]["val_loss"]
    weights_after = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(weights_before[k], weights_after[k]) for k in weights_before)


# ---- 2. one process per run folder ---------------------------------------------------------------


@pytest.mark.slow
def test_three_concurrent_resumes_train_each_epoch_once(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    procs = [start_mnist("train", f"resume={run_dir}", "epochs=4", cwd=tmp_path, env=cli_env) for _ in range(3)]
    stderrs = [p.communicate(timeout=300)[1] for p in procs]
    results = [(p.returncode, stderr) for p, stderr in zip(procs, stderrs)]
    assert sorted(code for code, _ in results) == [0, 2, 2], results
    for code, stderr in results:
        assert "Traceback" not in stderr
        if code == 2:  # refused while the winner trained, or after it had finished
            assert "is in use by PID" in stderr or "already finished 4 epochs" in stderr, stderr
    assert epochs_of(run_dir) == [1, 2, 3, 4]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 5


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder_and_kill_9_frees_the_folder(tmp_path, cli_env):
    first = start_mnist(
        "train",
        "model=lenet",
        "data.val_size=100",
        "batch_size=20",
        "device=cpu",
        "threads=1",
        "epochs=30",
        cwd=tmp_path,
        env=cli_env,
    )
    last = tmp_path / "outputs" / "train" / "latest" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    run_dir = last.parent.parent.resolve()
    try:
        assert first.poll() is None, "the first run ended too soon"
        second = run_mnist("train", f"resume={run_dir}", "epochs=31", cwd=tmp_path, env=cli_env)
        assert second.returncode == 2, second.stderr
        assert f"is in use by PID {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()  # SIGKILL: the kernel releases the lock
        first.wait()
    log_before = (run_dir / "train.log").read_bytes()
    done = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    third = run_mnist("train", f"resume={run_dir}", f"epochs={done + 1}", cwd=tmp_path, env=cli_env)
    assert third.returncode == 0, third.stderr
    assert epochs_of(run_dir) == list(range(1, done + 2))
    assert (run_dir / "train.log").read_bytes().startswith(log_before)


# ---- 3. torn metrics lines -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_torn_metrics_line_is_skipped_by_report_and_repaired_by_resume(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_loss": 0.1')  # a kill in the middle of an append
    report = run_mnist("report", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert report.returncode == 0, report.stderr
    assert report.stderr.count("unreadable line") == 1 and "Traceback" not in report.stderr
    resumed = run_mnist("train", f"resume={run_dir}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_of(run_dir) == [1, 2, 3]  # every line parses, each epoch once


def test_the_epoch_history_lives_in_the_checkpoint(finished):
    state = torch.load(finished / "checkpoints" / "last.pt", weights_only=True)
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    assert state["history"] == metrics.read_epochs(finished)


# ---- full disk: the old file survives and the message names it -----------------------------------


def full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


WRITERS = {
    "checkpoint": ("checkpoints/last.pt", lambda run: checkpoints.save(run / "checkpoints" / "last.pt", {"new": 1})),
    "summary": ("summary.json", lambda run: write_json(run / "summary.json", {"new": 1})),
    "metrics": ("metrics.jsonl", lambda run: metrics.write_epochs(run, [{"epoch": 9}])),
}


@pytest.mark.parametrize("what", WRITERS)
def test_a_full_disk_keeps_the_old_file_and_names_it(what, finished, tmp_path, monkeypatch):
    run_dir = copy_run(finished, tmp_path)
    name, write = WRITERS[what]
    before = files_of(run_dir)
    monkeypatch.setattr(os, "fsync", full_disk)  # the disk fills while the new version is flushed
    with pytest.raises(WriteFailed) as failed:
        write(run_dir)
    assert str(run_dir / name) in str(failed.value) and "No space left on device" in str(failed.value)
    assert files_of(run_dir) == before  # nothing changed, no temp file left behind


class FillsUp:
    """A file whose disk fills after `room` bytes, as a real full disk answers write()."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_disk_that_fills_inside_torch_save_is_the_same_one_sentence(finished, tmp_path, monkeypatch):
    # torch's zip writer turns the OSError into "RuntimeError: unexpected pos" while closing
    run_dir = copy_run(finished, tmp_path)
    before = files_of(run_dir)
    monkeypatch.setattr(atomic, "open", lambda path, mode: FillsUp(open(path, mode), room=4096), raising=False)
    with pytest.raises(WriteFailed) as failed:
        checkpoints.save(run_dir / "checkpoints" / "last.pt", {"weights": torch.zeros(10_000)})
    assert str(run_dir / "checkpoints" / "last.pt") in str(failed.value) and "No space left on device" in str(
        failed.value
    )
    assert files_of(run_dir) == before


def test_a_full_disk_during_training_stops_with_one_sentence_and_the_run_resumes(
    finished, tmp_path, cli_env, data_root, monkeypatch
):
    from mnist_cli.training import loop as train

    register_configs()
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[*SMALL, "epochs=3", f"data.root={data_root}", f"outputs_dir={tmp_path}"]
        )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saves = []
    real_save = torch.save

    def save_then_fill_up(obj, f):
        saves.append(1)
        if len(saves) == 2:  # the second epoch's checkpoint
            full_disk()
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_then_fill_up)
    with pytest.raises(WriteFailed) as failed:
        train.train(RunStart(cfg, []), RunFolder(run_dir))
    assert str(run_dir / "checkpoints" / "last.pt") in str(failed.value)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    resumed = run_mnist("train", f"resume={run_dir}", cwd=tmp_path, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_of(run_dir) == [1, 2, 3]


# ---- 7, 8, 9, 12: run folders are never overwritten, found, sized, resumable ---------------------


def test_hydra_run_dir_of_an_existing_run_is_refused_and_left_alone(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    before = files_of(run_dir)
    result = run_mnist("train", *SMALL, "epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert "is not empty" in result.stderr and f"resume={run_dir}" in result.stderr and "Traceback" not in result.stderr
    assert files_of(run_dir) == before


@pytest.mark.slow
def test_with_hydra_job_chdir_latest_still_points_at_the_new_run(tmp_path, cli_env):
    result = run_mnist("train", *SMALL, "epochs=1", "hydra.job.chdir=true", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    run_dir = Path(last_line(result))
    assert (tmp_path / "outputs" / "train" / "latest").resolve() == run_dir.resolve()
    assert not (run_dir / "outputs").exists()
    evaluated = run_mnist("eval", "run=latest", "format=json", cwd=tmp_path, env=cli_env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert Path(json.loads(evaluated.stdout)["run"]).resolve() == run_dir.resolve()


def test_data_limit_gets_a_validation_split_that_fits(tmp_path, cli_env):
    result = run_mnist(
        "train",
        "model=mlp",
        "model.hidden=[32]",
        "data.limit=300",
        "epochs=1",
        "device=cpu",
        "batch_size=50",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert "275 train / 25 val images" in result.stdout  # 1/12 held out, as 5,000 of 60,000


@pytest.mark.slow
def test_val_size_0_trains_on_every_image_and_keeps_the_last_epoch_as_best(tmp_path, cli_env):
    result = run_mnist("train", *SMALL, "data.val_size=0", "epochs=2", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / last_line(result)
    summary = strict_json(run_dir / "summary.json")
    assert summary["best"] == {"epoch": 2, "val_accuracy": None, "val_loss": None}
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    val = run_mnist("eval", f"run={run_dir}", "split=val", cwd=tmp_path, env=cli_env)
    assert val.returncode == 2 and "no validation split" in val.stderr and "Traceback" not in val.stderr
    assert run_mnist("eval", f"run={run_dir}", cwd=tmp_path, env=cli_env).returncode == 0


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, cli_env):
    process = start_mnist("train", *SMALL, "epochs=2", "model.hidden=[48]", cwd=tmp_path, env=cli_env)
    deadline = time.time() + 60
    written = lambda: [p for p in tmp_path.glob("outputs/train/*/*/.hydra/overrides.yaml") if "[48]" in p.read_text()]  # noqa: E731
    while not written() and time.time() < deadline:
        time.sleep(0.01)  # Hydra has written .hydra/ in full (overrides.yaml last); training needs seconds more
    process.kill()
    process.wait()
    (config,) = tmp_path.glob("outputs/train/*/*/.hydra/config.yaml")
    run_dir = config.parent.parent
    assert not (run_dir / "checkpoints" / "last.pt").exists(), "the run got to its first checkpoint: kill it sooner"
    resumed = run_mnist("train", f"resume={run_dir}", cwd=tmp_path, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_of(run_dir) == [1, 2]
    summary = strict_json(run_dir / "summary.json")
    assert "model.hidden=[48]" in summary["overrides"] and summary["status"] == "completed"


def test_eval_of_a_run_stopped_before_its_first_checkpoint_says_how_to_continue_it(tmp_path):
    from mnist_cli.errors import UserError
    from mnist_cli.runs.folder import resolve_checkpoint

    run = RunFolder(tmp_path / "run")
    run.hydra_config.parent.mkdir(parents=True)
    run.hydra_config.write_text("epochs: 2\n")
    run.checkpoints.mkdir()
    with pytest.raises(UserError, match="is it a train run folder"):  # stopped while loading data: not started
        resolve_checkpoint(str(run.path), "outputs", key="run")
    run.model_table.write_text("layers\n")  # training had started
    with pytest.raises(UserError, match=f"has no checkpoint yet: .*continue it with mnist train resume={run.path}"):
        resolve_checkpoint(str(run.path), "outputs", key="run")


def test_a_resumed_run_keeps_its_overrides_and_adds_up_its_time(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    before = strict_json(run_dir / "summary.json")
    result = run_mnist("train", f"resume={run_dir}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    after = strict_json(run_dir / "summary.json")
    assert after["overrides"] == before["overrides"] and after["resumed_with"] == [f"resume={run_dir}", "epochs=3"]
    assert after["resumes"] == [[f"resume={run_dir}", "epochs=3"]]  # every resume's, in order
    assert after["wall_seconds"] > before["wall_seconds"]


# ---- 11: paths as the user wrote them --------------------------------------------------------------


def test_quoted_outputs_dir_is_used_as_the_user_meant_it(tmp_path, cli_env):
    result = run_mnist("train", *SMALL, "epochs=1", "outputs_dir='my runs/x'", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my runs"]
    assert (tmp_path / "my runs" / "x" / "train" / "latest" / "summary.json").is_file()


def test_a_run_that_does_not_learn_says_so(tmp_path, cli_env):
    result = run_mnist(
        "train",
        "model=mlp",
        "optimizer.lr=1e9",
        "scheduler=none",
        "epochs=1",
        "data.val_size=100",
        "device=cpu",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert "the run did not learn" in result.stdout
    summary = strict_json(tmp_path / last_line(result) / "summary.json")  # strict JSON: no Infinity or NaN
    assert summary["learned"] is False and "chance" in summary["warning"]


def test_summary_json_is_strict_json_when_a_loss_is_infinite(tmp_path):
    write_json(tmp_path / "summary.json", {"final": {"val_loss": float("inf"), "train_loss": float("nan")}})
    assert strict_json(tmp_path / "summary.json") == {"final": {"val_loss": None, "train_loss": None}}


def test_a_run_whose_saved_config_was_cut_short_is_refused_in_one_sentence(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("dataset:\n  name: mnist\n")
    result = run_mnist("train", f"resume={run_dir}", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "is incomplete" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", ".lock", "train.log"]


def test_eval_into_a_closed_pipe_is_not_a_failed_gate(finished, tmp_path, cli_env):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    process = start_mnist("eval", f"run={finished}", "min_accuracy=0.0", cwd=tmp_path, env=cli_env, stdout=pipe)
    with open(pipe, "rb"):  # `| head -0`: the reader is gone before anything is written
        pass
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr  # 128 + SIGPIPE, as any command in a closed pipe; never 1
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_ctrl_c_during_eval_or_predict_is_one_sentence_and_leaves_no_folder(command, finished, tmp_path, cli_env):
    args = [MNIST_COMMAND, command, f"run={finished}"] + (["indices=[0,1]"] if command == "predict" else [])
    process = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # as a terminal starts it
    time.sleep(1.5)  # inside Hydra or torch's import: the moments a Ctrl-C used to become a traceback
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the command finished before the signal")
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "outputs").glob("predict/*/*")), "an empty predict folder was left"


# ---- found by a hostile pass: ways to overwrite a run that the checks above did not close --------


def test_a_run_folder_named_through_an_interpolation_is_checked_as_hydra_resolves_it(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    before = files_of(run_dir)
    result = run_mnist(
        "train",
        *SMALL,
        "epochs=1",
        f"outputs_dir={tmp_path}",
        "hydra.run.dir=${outputs_dir}/run",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 2 and "is not empty" in result.stderr, result.stderr
    assert files_of(run_dir) == before


def test_a_file_where_the_run_folder_should_be_is_one_sentence(tmp_path, cli_env):
    (tmp_path / "afile").write_text("mine")
    result = run_mnist("train", *SMALL, "epochs=1", "hydra.run.dir=afile", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "cannot be created" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.slow
def test_two_processes_naming_one_new_folder_leave_the_winners_run_whole(tmp_path, cli_env):
    procs = [
        start_mnist("train", *SMALL, "epochs=2", f"seed={seed}", "hydra.run.dir=dup", cwd=tmp_path, env=cli_env)
        for seed in (1, 2)
    ]
    stderrs = [p.communicate(timeout=300)[1] for p in procs]
    results = [(p.returncode, stderr) for p, stderr in zip(procs, stderrs)]
    assert sorted(code for code, _ in results) == [0, 2], results
    winner = 1 + [code for code, _ in results].index(0)
    assert f"seed={winner}" in (tmp_path / "dup" / ".hydra" / "overrides.yaml").read_text()
    assert epochs_of(tmp_path / "dup") == [1, 2] and (tmp_path / "dup" / "train.log").exists()


@pytest.mark.parametrize("where", ["best.pt", "a copy elsewhere"])
def test_resume_continues_only_from_the_runs_own_last_pt(where, finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    target = run_dir / "checkpoints" / "best.pt"
    if where == "a copy elsewhere":
        target = other / "from_run.pt"
        shutil.copy(run_dir / "checkpoints" / "last.pt", target)
    before = files_of(run_dir), files_of(other)
    result = run_mnist("train", f"resume={target}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "give the run folder" in result.stderr, result.stderr
    assert (files_of(run_dir), files_of(other)) == before


def test_a_planted_lock_link_is_not_followed(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    RunFolder(run_dir).lock.symlink_to(precious)
    result = run_mnist("train", f"resume={run_dir}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "cannot lock" in result.stderr and "Traceback" not in result.stderr
    assert precious.read_text() == "do not truncate me"


@pytest.mark.slow
def test_a_folder_with_a_quote_in_its_name_resumes(tmp_path, cli_env):
    outputs = tmp_path / "Bob's runs"
    first = run_mnist("train", *SMALL, "epochs=1", f'outputs_dir="{outputs}"', cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    resumed = run_mnist("train", "resume=latest", "epochs=2", f'outputs_dir="{outputs}"', cwd=tmp_path, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_of(outputs / "train" / "latest") == [1, 2]


def test_a_real_folder_named_latest_is_left_alone(tmp_path, cli_env):
    mine = tmp_path / "outputs" / "train" / "latest"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    result = run_mnist("train", *SMALL, "epochs=1", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "is not a link made by mnist" in result.stdout and (mine / "notes.txt").read_text() == "mine"


def test_report_into_a_closed_pipe_is_quiet(finished, tmp_path, cli_env):
    process = subprocess.Popen(
        [MNIST_COMMAND, "report", str(finished.parent), "format=json"],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # `mnist report ... | head -0`
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and "Traceback" not in stderr, stderr


def test_temp_files_a_killed_writer_left_are_removed_by_the_next_one(finished, tmp_path, cli_env):
    run_dir = copy_run(finished, tmp_path)
    stale = [run_dir / "checkpoints" / ".last.pt.99999.tmp", run_dir / ".metrics.jsonl.99999.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    result = run_mnist("train", f"resume={run_dir}", "epochs=3", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in stale)
