"""Where the output goes: a terminal or pipe that cannot take UTF-8, a full disk behind `>`, and command lines whose
paths Hydra's grammar does not take as they are."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import MNIST_COMMAND, QUICK, run_mnist, start_mnist


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("streams")


@pytest.fixture(scope="module")
def trained_run(workdir, cli_env) -> Path:
    result = run_mnist("train", "model=mlp", *QUICK, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "encoding", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}]
)
def test_eval_and_report_print_in_ascii_when_the_output_cannot_take_utf8(encoding, trained_run, workdir, cli_env):
    env = {**cli_env, **encoding}
    for args in (["eval", f"run={trained_run}"], ["report", str(workdir / "outputs")]):
        result = subprocess.run([MNIST_COMMAND, *args], cwd=workdir, env=env, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert b"Traceback" not in result.stderr
        result.stdout.decode("ascii")  # nothing but ASCII reached the stream
    assert (
        b"accuracy"
        in subprocess.run(
            [MNIST_COMMAND, "eval", f"run={trained_run}"], cwd=workdir, env=env, capture_output=True, timeout=120
        ).stdout
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, code",
    [
        (["eval", "format=json", "min_accuracy=0.01"], 74),  # the gate passed, but nobody can read the result
        (["eval", "format=json", "min_accuracy=1.0"], 1),  # the gate failed: still the failed-gate code
        (["eval"], 74),
        (["report", "outputs"], 74),
        (["train", "model=mlp", *QUICK], 74),
    ],
)
def test_a_full_disk_behind_stdout_is_one_sentence_and_never_the_gate_code_for_a_pass(
    args, code, trained_run, workdir, cli_env
):
    if args[0] == "eval":
        args = [*args, f"run={trained_run}"]
    child = start_mnist(*args, cwd=workdir, env=cli_env, stdout=Path("/dev/full"))
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "output could not be written (No space left on device)" in stderr


@pytest.mark.slow
def test_a_train_whose_output_is_lost_still_finishes_its_run(workdir, cli_env, tmp_path):
    child = start_mnist(
        "train", "model=mlp", *QUICK, f"outputs_dir={tmp_path}", cwd=workdir, env=cli_env, stdout=Path("/dev/full")
    )
    child.communicate(timeout=300)
    (summary,) = tmp_path.glob("train/*/*/summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"


@pytest.mark.parametrize(
    "inputs", ["inputs=[scans/ünï/zïffer.png]", "inputs=[scans/ünï/zïffer.png,scans/ünï/zïffer.png]"]
)
def test_paths_with_non_ascii_letters_need_no_quotes(inputs, trained_run, workdir, cli_env, tmp_path):
    folder = tmp_path / "scans" / "ünï"
    folder.mkdir(parents=True)
    from PIL import Image, ImageDraw

    image = Image.new("L", (28, 28))
    ImageDraw.Draw(image).line((14, 4, 14, 24), fill=255, width=3)
    image.save(folder / "zïffer.png")
    result = run_mnist("predict", f"run={trained_run}", inputs, cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "zïffer.png" in result.stdout


@pytest.mark.parametrize("inputs", ["inputs=[scans/x (1).png]", "inputs=[scans/{a}.png]"])
def test_a_value_hydra_cannot_read_says_how_to_quote_it(inputs, workdir, cli_env):
    result = run_mnist("predict", inputs, cwd=workdir, env=cli_env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "quote" in result.stderr


@pytest.mark.slow
def test_a_closed_stdout_is_lost_output_and_a_full_stderr_keeps_the_exit_code(trained_run, workdir, cli_env):
    closed = subprocess.run(["bash", "-c", f"'{MNIST_COMMAND}' eval run='{trained_run}' >&-"], cwd=workdir, env=cli_env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert closed.returncode == 74 and "standard output is closed" in closed.stderr, closed.stderr
    refused = subprocess.run(["bash", "-c", f"'{MNIST_COMMAND}' eval run=nowhere 2>/dev/full"], cwd=workdir,
                             env=cli_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2  # the refusal's code, not 1 from a failed print


def test_our_overrides_go_after_the_users_last_one_so_a_trailing_flag_stays_a_flag():
    from mnist_cli.cli.command_line import parse_command_line

    line = parse_command_line("train", ["epochs=1", "hydra.sweep.dir=sw", "-m"]).adding("hydra.sweep.dir='/abs/sw'")
    assert line.hydra_argv[1:] == ["epochs=1", "hydra.sweep.dir=sw", "hydra.sweep.dir='/abs/sw'", "-m"]


@pytest.mark.parametrize("word", ["hydra.run.dir=ünï\\,x", "data.root=var/my data ünï (1)", "inputs=['ünï.png']"])
def test_a_word_quoting_would_not_make_readable_is_left_as_typed(word):
    from mnist_cli.cli.command_line import non_ascii_quoted

    assert non_ascii_quoted([word]) == [word]
