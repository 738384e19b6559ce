"""What is installed works on its own: the wheel carries its configs, and the `mnist` script trains as the tests' forked runs do."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MNIST_COMMAND, QUICK, run_mnist

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_its_configs(tmp_path, cli_env):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("mnist_cli-*.whl")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / "mnist_cli" / "conf" / "model" / "cnn.yaml").is_file()

    env = dict(cli_env, PYTHONPATH=str(target))
    probe = "import mnist_cli, sys; print(mnist_cli.__file__); from mnist_cli.cli.main import main; sys.exit(main())"
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "--cfg", "job", "model=mlp"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the checkout
    assert "name: mlp" in result.stdout and "name: adam" in result.stdout
    # Hydra's plugin scan finds the installed copy of our sweeper
    scan = (
        "import sys; from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
        "print(*[sys.modules[c.__module__].__file__ for c in Plugins.instance().discover(Sweeper) if 'mnist' in c.__module__])"
    )
    found = subprocess.run(
        [sys.executable, "-c", scan], cwd=run_dir, env=env, capture_output=True, text=True, timeout=120
    )
    assert found.stdout.strip().startswith(str(target / "hydra_plugins" / "mnist_optuna_sweeper")), (
        found.stdout + found.stderr
    )


@pytest.mark.slow
def test_the_console_script_trains_as_the_forked_runs_do(tmp_path, cli_env):
    """The other tests fork `mnist` from a process that has imported torch (forked_mnist.py): the installed
    command, started from nothing, must give the same output and the same numbers."""
    args = ["train", "model=mlp", "model.hidden=[32]", *QUICK]
    results = {}
    for how in ("script", "forked"):
        (tmp_path / how).mkdir()
        if how == "script":
            results[how] = subprocess.run(
                [MNIST_COMMAND, *args], cwd=tmp_path / how, env=cli_env, capture_output=True, text=True, timeout=300
            )
        else:
            results[how] = run_mnist(*args, cwd=tmp_path / how, env=cli_env)
        assert results[how].returncode == 0, results[how].stderr
    metrics = {
        how: [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (tmp_path / how / "outputs" / "train" / "latest" / "metrics.jsonl").read_text().splitlines()
        ]
        for how in results
    }
    assert metrics["script"] == metrics["forked"] and len(metrics["script"]) == 2
    shown = {
        how: re.sub(r"[\d.]+s\b|\d{4}-\d\d-\d\d/[\w-]+", "", r.stdout.replace(str(tmp_path / how), ""))
        for how, r in results.items()
    }  # times, run names and folders differ
    assert shown["script"] == shown["forked"]
