"""How `mnist train` starts: a model too big for memory, and settings it takes but says a word about."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import QUICK, run_mnist


@pytest.mark.slow
def test_a_model_too_big_for_memory_is_one_sentence_and_leaves_no_folder_and_latest_alone(tmp_path, cli_env):
    first = run_mnist("train", "model=mlp", *QUICK, cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    latest = tmp_path / "outputs" / "train" / "latest"
    before = os.readlink(latest)
    result = run_mnist("train", "model=mlp", "model.hidden=[100000000]", *QUICK, cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "ran out of memory" in result.stderr and "79,500,000,010 parameters" in result.stderr
    assert os.readlink(latest) == before  # `mnist eval run=latest` still finds the run that trained
    runs = [p.name for p in (tmp_path / "outputs" / "train").glob("*/*") if p.parent.name != "latest"]
    assert runs == [Path(before).name]


@pytest.mark.slow
def test_more_threads_than_cores_and_a_limit_with_no_validation_images_are_said(tmp_path, cli_env):
    threads = (os.cpu_count() or 1) + 1
    result = run_mnist(
        "train",
        "model=mlp",
        "data.limit=11",
        "batch_size=5",
        "epochs=1",
        f"threads={threads}",
        "device=cpu",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert f"note: threads={threads} is more than this machine's" in result.stdout
    assert "note: no validation split" in result.stdout
