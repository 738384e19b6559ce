"""Where `mnist export` may write: never over a file a run folder needs, a folder gets the format's file
name, a suffix of another format is refused, and any valid file name can be written atomically."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from conftest import run_mnist
from mnist_cli.runs.atomic import atomic_write


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exportwork")


@pytest.fixture(scope="module")
def trained_run(workdir, cli_env) -> Path:
    result = run_mnist("train", "model=mlp", "epochs=1", "data.val_size=100", "device=cpu", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


def fingerprint(folder: Path) -> dict:
    """Every file of `folder` (links not followed) and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_atomic_write_takes_any_valid_file_name(tmp_path):
    names = ["a" * 251 + ".pt2", "é" * 127]  # 255 and 254 bytes: the longest names a folder takes
    for name in names:
        temp_names = []
        atomic_write(tmp_path / name, lambda f: (temp_names.append(Path(f.name)), f.write(b"x")))  # noqa: B023 (called here)
        (temp,) = temp_names
        assert (
            temp.parent == tmp_path and temp.name.startswith(".") and temp.name.endswith(".tmp")
        )  # lock_run removes leftovers
        assert len(os.fsencode(temp.name)) <= 255
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp file left


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "the exported checkpoint",
        "through a linked folder and ..",
        "last.pt",
        "summary.json",
        ".hydra/config.yaml",
        "a bare checkpoint itself",
    ],
)
def test_export_refuses_to_replace_a_file_the_run_needs(case, trained_run, workdir, cli_env, tmp_path):
    (tmp_path / "alias").symlink_to(trained_run)
    bare = tmp_path / "bare.pt"
    bare.write_bytes((trained_run / "checkpoints" / "best.pt").read_bytes())
    run, output = {
        "the exported checkpoint": (trained_run, trained_run / "checkpoints" / "best.pt"),
        "through a linked folder and ..": (
            trained_run,
            tmp_path / "alias" / "checkpoints" / ".." / "checkpoints" / "best.pt",
        ),
        "last.pt": (trained_run, trained_run / "checkpoints" / "last.pt"),
        "summary.json": (trained_run, trained_run / "summary.json"),
        ".hydra/config.yaml": (trained_run, trained_run / ".hydra" / "config.yaml"),
        "a bare checkpoint itself": (bare, bare),
    }[case]
    before, bare_bytes = fingerprint(trained_run), bare.read_bytes()
    result = run_mnist("export", f"run={run}", "format=torchscript", f"output={output}", cwd=workdir, env=cli_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("mnist export: writing ") and result.stderr.count("\n") == 1
    assert "would replace" in result.stderr and "give output= a path outside the run's files." in result.stderr
    assert fingerprint(trained_run) == before and bare.read_bytes() == bare_bytes


def test_an_output_named_for_another_format_is_refused(trained_run, workdir, cli_env, tmp_path):
    result = run_mnist(
        "export", f"run={trained_run}", "format=pt2", f"output={tmp_path / 'x.onnx'}", cwd=workdir, env=cli_env
    )
    assert result.returncode == 2
    assert (
        "ends in .onnx, the suffix of onnx files, but format=pt2; name it *.pt2 or give format=onnx." in result.stderr
    )
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_export_into_a_folder_or_to_a_long_name_or_over_a_hard_link(trained_run, workdir, cli_env, tmp_path):
    into = run_mnist("export", f"run={trained_run}", f"output={tmp_path}", cwd=workdir, env=cli_env)
    assert into.returncode == 0, into.stderr
    assert torch.export.load(tmp_path / "model.pt2").module()(torch.rand(3, 1, 28, 28)).shape == (3, 10)

    long = tmp_path / ("m" * 246 + ".pt2")  # 250 characters: the temp file's name passed 255 bytes
    named = run_mnist("export", f"run={trained_run}", f"output={long}", cwd=workdir, env=cli_env)
    assert named.returncode == 0, named.stderr
    assert long.stat().st_size > 0

    link = tmp_path / "hard.pt"  # another name of the run's checkpoint: the name is replaced, the checkpoint is not
    os.link(trained_run / "checkpoints" / "best.pt", link)
    before = fingerprint(trained_run)
    linked = run_mnist("export", f"run={trained_run}", "format=torchscript", f"output={link}", cwd=workdir, env=cli_env)
    assert linked.returncode == 0, linked.stderr
    assert fingerprint(trained_run) == before and link.stat().st_nlink == 1


def test_control_characters_in_a_name_are_written_as_escapes():
    from mnist_cli.runs.atomic import printable

    assert printable("\x1b[31mred\x1b[0m.png") == "\\x1b[31mred\\x1b[0m.png"
    assert printable("new\nline.png") == "new\\x0aline.png" and printable("caf\udce9.png") == "caf\\xe9.png"


def test_an_output_that_is_no_regular_file_is_refused_and_left_as_it_is(trained_run, workdir, cli_env, tmp_path):
    fifo = tmp_path / "pipe"  # what /dev/null or /dev/stdout would be: the rename would replace the device
    os.mkfifo(fifo)
    result = run_mnist("export", f"run={trained_run}", "format=torchscript", f"output={fifo}", cwd=workdir, env=cli_env)
    assert result.returncode == 2 and "is not a regular file; give the path of a file to write." in result.stderr
    assert fifo.is_fifo()
