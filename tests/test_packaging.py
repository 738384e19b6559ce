"""The configs ship inside the wheel: a non-editable install composes `mnist train --cfg job`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_its_configs(tmp_path, cli_env):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("mnist_cli-*.whl")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / "mnist_cli" / "conf" / "model" / "cnn.yaml").is_file()

    env = dict(cli_env, PYTHONPATH=str(target))
    probe = "import mnist_cli, sys; print(mnist_cli.__file__); from mnist_cli.cli import main; sys.exit(main())"
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "--cfg", "job", "model=mlp"],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the checkout
    assert "name: mlp" in result.stdout and "name: adam" in result.stdout
