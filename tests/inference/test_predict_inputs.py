"""`mnist predict` on inputs that used to kill it: huge images, broken files, thousands of files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import bar_png, run_mnist

REFUSED = "pixels; mnist predict reads at most 200 megapixels"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predictinputs")


@pytest.fixture(scope="module")
def trained_run(workdir, cli_env) -> Path:
    result = run_mnist("train", "model=mlp", "epochs=1", "data.val_size=100", "device=cpu", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


def predict_rows(workdir: Path, cli_env: dict, *args: str):
    """(result, rows of the predict run's predictions.jsonl, its folder)."""
    earlier = set((workdir / "outputs" / "predict").glob("*/*"))
    result = run_mnist("predict", "run=latest", *args, cwd=workdir, env=cli_env)
    (out,) = set((workdir / "outputs" / "predict").glob("*/*")) - earlier
    jsonl = out / "predictions.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    return result, rows, out


@pytest.mark.slow
def test_a_huge_image_gets_its_row_and_the_others_are_still_predicted(trained_run, workdir, cli_env, tmp_path):
    huge = bar_png(tmp_path / "huge.png", 20000)  # 400 megapixels: Pillow's bomb error killed the whole run
    big = bar_png(tmp_path / "big.png", 12000)  # 144 megapixels: read, reduced while still 8-bit
    small = bar_png(tmp_path / "small.png", 120)  # the same picture, small
    result, rows, _ = predict_rows(workdir, cli_env, f"inputs=[{huge},{big},{small}]")
    assert result.returncode == 1, result.stderr  # some failed, some predicted
    assert "Traceback" not in result.stderr + result.stdout
    assert [Path(r["input"]).name for r in rows] == ["huge.png", "big.png", "small.png"]
    assert rows[0]["error"] == f"image is 20000×20000 {REFUSED}" and rows[0]["predicted"] is None
    assert rows[1]["error"] is None and rows[2]["error"] is None
    assert rows[1]["predicted"] == rows[2]["predicted"]  # the big scan reads like its small copy


def test_broken_and_odd_files_each_get_a_one_sentence_row(trained_run, workdir, cli_env, tmp_path):
    good = bar_png(tmp_path / "good.png", 60)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("a text file with an image's name\n")
    Image.new("L", (1, 1), 255).save(tmp_path / "one_pixel.png")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:50])  # cut inside the pixel data
    screen = struct.pack("<HH", 65535, 65535)  # a 35-byte GIF that says it is 65535x65535
    gif = (
        b"GIF89a"
        + screen
        + b"\x80\x00\x00"
        + b"\x00" * 3
        + b"\xff" * 3
        + b","
        + b"\x00" * 4
        + screen
        + b"\x00\x02\x02\x44\x01\x00;"
    )
    (tmp_path / "huge.gif").write_bytes(gif)
    expected = {
        "good.png": None,
        "empty.png": "empty file",
        "notes.png": "not an image file",
        "one_pixel.png": "blank image: no ink found",
        "truncated.png": "unreadable image (",  # then Pillow's words
        "huge.gif": f"image is 65535×65535 {REFUSED}",
    }
    result, rows, _ = predict_rows(
        workdir, cli_env, f"inputs=[{','.join(str(tmp_path / n) for n in expected)}]", "format=json"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["predictions"] == rows
    errors = {Path(r["input"]).name: r["error"] for r in rows}
    assert errors.pop("truncated.png").startswith(expected.pop("truncated.png"))
    assert errors == expected
    assert rows[0]["predicted"] is not None


@pytest.mark.slow
def test_save_inputs_on_hundreds_of_files_draws_the_first_100_and_says_so(trained_run, workdir, cli_env, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(250):
        digit = np.zeros((28, 28), np.uint8)
        digit[4 + i % 5 : 24, 11:17] = 255
        Image.fromarray(digit).save(folder / f"{i:03d}.png")
    result, rows, out = predict_rows(workdir, cli_env, f"inputs=[{folder}]", "save_inputs=true")
    assert result.returncode == 0, result.stderr
    assert len(rows) == 250 and all(r["predicted"] is not None for r in rows)
    assert "inputs.png shows the first 100 of 250 inputs." in result.stdout
    with Image.open(out / "inputs.png") as grid:
        assert grid.width <= 1400 and grid.height <= 2600  # 13 rows of 8; all 250 drew 32 rows, 5,000+ px tall


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_a_16_bit_or_float_image_is_scaled_not_clipped(mode, tmp_path):
    from mnist_cli.datasets.images import prepare

    ink = np.zeros((56, 56))
    ink[10:46, 26:30] = 1.0  # a "1"
    top = 1.0 if mode == "F" else 65535
    wide = (0.9 - 0.6 * ink) * top  # dark ink on light paper, as a scanner's 16-bit grey file holds it
    path = tmp_path / f"wide.{'png' if mode == 'I;16' else 'tiff'}"
    image = Image.fromarray(wide.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert image.mode == mode
    image.save(path)
    reference = tmp_path / "narrow.png"
    Image.fromarray((wide / top * 255).round().astype(np.uint8), "L").save(reference)
    assert np.array_equal(prepare(path, "digit"), prepare(reference, "digit"))  # the same as its 8-bit copy


def test_a_file_name_that_is_not_utf8_gets_its_row_written_readably(trained_run, workdir, cli_env, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    bar_png(folder / "good.png", 60)
    bar_png(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")), 60)  # Latin-1 bytes: no UTF-8 name
    Path(os.fsdecode(bytes(folder) + b"/notes\xff.png")).write_text("not an image")
    result, rows, out = predict_rows(workdir, cli_env, f"inputs=[{folder}]")
    assert result.returncode == 1, result.stderr  # notes\xff.png failed, the rest was predicted
    assert "Traceback" not in result.stderr
    assert [Path(r["input"]).name for r in rows] == ["caf\\xe9.png", "good.png", "notes\\xff.png"]
    assert rows[0]["predicted"] == rows[1]["predicted"] and rows[2]["error"] == "not an image file"
    csv_lines = (out / "predictions.csv").read_text(encoding="utf-8").splitlines()  # strict UTF-8
    assert [line.split(",")[0] for line in csv_lines[1:]] == [r["input"] for r in rows]
    assert "caf\\xe9.png" in result.stdout and "notes\\xff.png" in result.stdout


def test_long_paths_stay_whole_in_predicts_table_and_closing_line(trained_run, workdir, cli_env, tmp_path):
    folder = tmp_path / "scans" / ("a_rather_long_folder_name_" * 7)  # wider than the 160 columns of a log
    folder.mkdir(parents=True)
    names = [f"digit_{i}.png" for i in range(3)]
    for name in names:
        bar_png(folder / name, 60)
    outputs = tmp_path / ("predictions_kept_in_a_rather_long_folder_name_" * 3)
    result = run_mnist(
        "predict", f"run={trained_run}", f"inputs=[{folder}]", f"outputs_dir={outputs}", cwd=workdir, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert f"image files in {folder}/\n" in result.stdout  # the folder once, on one line
    table = result.stdout.split("\n", 1)[1]
    for name in names:
        assert f" {name} " in table  # the part that differs, whole (it was cut to `scans/a_rather_long_folder_f…`)
    (csv,) = outputs.glob("predict/*/*/predictions.csv")
    assert f"3 predicted, 0 failed; wrote {csv}\n" in result.stdout  # never wrapped mid-path
