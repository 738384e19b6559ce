"""Interrupted runs resume to the same result; signals exit cleanly; bad states are refused."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import Payload, run_mnist, start_mnist
from forked_mnist import ForkedCommand

# 500 training images in batches of 20: 25 steps an epoch, 4 epochs; last.pt every 5 steps too
RUN = ["model=lenet", "epochs=4", "batch_size=20", "data.val_size=100", "device=cpu", "threads=1"]
EVERY = "checkpoint.every_n_steps=5"


def metrics(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cli_env) -> Path:
    """The uninterrupted run every interrupted one must match."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_mnist("train", *RUN, EVERY, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


def start(workdir: Path, env: dict, *args: str) -> ForkedCommand:
    return start_mnist("train", *args, cwd=workdir, env=env)


def wait_for_checkpoints(run_root: Path, process: ForkedCommand, count: int) -> bool:
    """Wait until last.pt has been written `count` times (or the process ended); True if it was."""
    seen, last_mtime = 0, None
    while process.poll() is None:
        last = run_root / "latest" / "checkpoints" / "last.pt"
        mtime = last.stat().st_mtime_ns if last.exists() else None
        if mtime is not None and mtime != last_mtime:
            seen, last_mtime = seen + 1, mtime
            if seen >= count:
                return True
        time.sleep(0.002)
    return False


def resume_until_done(run_dir: Path, workdir: Path, env: dict) -> None:
    for _ in range(3):
        summary = run_dir / "summary.json"
        if summary.exists() and json.loads(summary.read_text())["status"] == "completed":
            return
        result = run_mnist("train", f"resume={run_dir}", cwd=workdir, env=env)
        assert result.returncode == 0, result.stderr
    raise AssertionError("did not finish")


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(int(os.environ.get("KILL_TRIALS", "4"))))  # KILL_TRIALS=20 for more
def test_killed_at_a_random_step_and_resumed_matches_the_uninterrupted_run(trial, reference, tmp_path, cli_env):
    rng = random.Random(trial)
    process = start(tmp_path, cli_env, *RUN, EVERY)
    reached = wait_for_checkpoints(tmp_path / "outputs" / "train", process, count=rng.randint(1, 18))
    time.sleep(rng.uniform(0, 0.05))
    process.kill()  # SIGKILL: no chance to save anything
    process.wait()
    run_dir = (tmp_path / "outputs" / "train" / "latest").resolve()
    assert reached and process.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    resume_until_done(run_dir, tmp_path, cli_env)
    assert metrics(run_dir) == metrics(reference)
    assert same_weights(weights(run_dir), weights(reference))
    for name in ("metrics.jsonl", "metrics.csv"):  # no duplicate epochs after resuming
        assert len((run_dir / name).read_text().splitlines()) == 4 + (name == "metrics.csv")


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_last_pt_says_how_to_resume_and_exits(signum, code, reference, tmp_path, cli_env):
    process = start(tmp_path, cli_env, *RUN)  # checkpoints per epoch only: the signal writes the mid-epoch one
    assert wait_for_checkpoints(tmp_path / "outputs" / "train", process, count=1)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    run_dir = (tmp_path / "outputs" / "train" / "latest").resolve()
    assert f"Continue with: mnist train resume={run_dir}" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] > 0 or state["epoch"] >= 1
    resume_until_done(run_dir, tmp_path, cli_env)
    reference_metrics = [{k: v for k, v in r.items()} for r in metrics(reference)]
    assert metrics(run_dir) == reference_metrics  # every_n_steps does not change the numbers


@pytest.mark.slow
def test_resume_refuses_changes_and_trains_longer_when_asked(reference, tmp_path, cli_env):
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(reference, copy)

    def stamps() -> dict:  # every file of the run (the lock file holds the PID of its last writer)
        return {p.name: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}

    before = stamps()
    changed = run_mnist("train", f"resume={copy}", "model=mlp", cwd=tmp_path, env=cli_env)
    assert changed.returncode == 2 and "model cannot change" in changed.stderr
    finished = run_mnist("train", f"resume={copy}", cwd=tmp_path, env=cli_env)
    assert finished.returncode == 2 and "raise epochs= to train longer" in finished.stderr
    missing = run_mnist("train", f"resume={tmp_path / 'nope'}", cwd=tmp_path, env=cli_env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert stamps() == before  # untouched

    longer = run_mnist("train", f"resume={copy}", "epochs=5", cwd=tmp_path, env=cli_env)
    assert longer.returncode == 0, longer.stderr
    assert [r["epoch"] for r in metrics(copy)] == [1, 2, 3, 4, 5]
    assert metrics(copy)[:4] == metrics(reference)
    assert json.loads((copy / "summary.json").read_text())["epochs_completed"] == 5


def test_a_run_from_before_precision_and_fused_existed_resumes(reference, tmp_path, cli_env):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    last = copy / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["precision"], state["config"]["optimizer"]["fused"]  # as an older mnist-cli wrote it
    torch.save(state, last)
    longer = run_mnist("train", f"resume={copy}", "epochs=5", cwd=tmp_path, env=cli_env)
    assert longer.returncode == 0, longer.stderr
    assert [r["epoch"] for r in metrics(copy)] == [1, 2, 3, 4, 5]


def test_early_stopping_stops_cleanly_and_says_so(tmp_path, cli_env):
    result = run_mnist(
        "train",
        *RUN,
        "epochs=6",
        "early_stopping.patience=1",
        "early_stopping.min_delta=1.0",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert "early stopping" in result.stdout
    summary = json.loads((tmp_path / result.stdout.strip().splitlines()[-1] / "summary.json").read_text())
    assert summary["status"] == "early_stopped" and summary["epochs_completed"] == 2


def test_a_diverging_run_stops_with_advice_and_keeps_its_last_good_checkpoint(tmp_path, cli_env):
    result = run_mnist(
        "train",
        "model=mlp",
        "optimizer=sgd",
        "optimizer.lr=1e9",
        "scheduler=none",
        "epochs=3",
        "data.val_size=100",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 1
    assert "lower optimizer.lr" in result.stderr and "Traceback" not in result.stderr
    run_dir = (tmp_path / "outputs" / "train" / "latest").resolve()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


def test_resume_refuses_a_checkpoint_with_code_in_it(tmp_path, cli_env):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"format": "mnist-cli-checkpoint", "step": 0, "model": Payload(marker)}, folder / "last.pt")
    result = run_mnist("train", f"resume={tmp_path / 'run'}", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "refusing to load it" in result.stderr
    assert not marker.exists()


def test_an_outputs_dir_that_cannot_be_created_is_a_clear_error(tmp_path, cli_env):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run_mnist("train", f"outputs_dir={blocker}", "epochs=1", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(blocker) in result.stderr
    assert blocker.read_text() == "a file where a folder should be"
