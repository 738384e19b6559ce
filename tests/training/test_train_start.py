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


def test_bf16_on_a_cpu_without_bf16_instructions_is_said_since_it_is_slower_than_fp32(tmp_path, cli_env):
    from mnist_cli.training.notes import cpu_has_bf16

    assert cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags\t\t: fpu sse2 avx avx2 fma\nbugs\t\t: avx512_bf16\n")  # a flag, not a bug line
    assert cpu_has_bf16("Features\t: fp asimd sve bf16 i8mm\n")  # ARM (Neoverse V1) says it here
    assert not cpu_has_bf16("Features\t: fp asimd evtstrm aes\n")
    result = run_mnist(
        "train", "model=mlp", "data.limit=200", "batch_size=50", "epochs=1", "precision=bf16", "device=cpu",
        cwd=tmp_path, env=cli_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    this_cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
    said = "note: precision=bf16 on a CPU without AVX512-BF16 or AMX" in result.stdout
    assert said == (this_cpu is not None and not cpu_has_bf16(this_cpu))
