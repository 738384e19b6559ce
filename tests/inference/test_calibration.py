"""Calibration: the expected calibration error of a constructed case, temperature scaling, and `mnist eval`'s
calibration report, picture, gate and stored temperature."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run_mnist
from mnist_cli.inference.calibration import calibration_report, fit_temperature, reliability


def two_class_logits(probabilities):
    """Logits whose softmax gives class 0 probability p (so the prediction is class 0, confidence p, for p > 0.5)."""
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], 1)


def test_the_ece_of_a_constructed_case_is_the_weighted_gap_per_bin():
    # four answers 0.8 confident, three right: gap 0.05; two answers 0.6 confident, both right: gap 0.4
    logits = two_class_logits([0.8, 0.8, 0.8, 0.8, 0.6, 0.6])
    labels = torch.tensor([0, 0, 0, 1, 0, 0])
    report = calibration_report(logits, labels)
    assert report["ece"] == pytest.approx((4 * 0.05 + 2 * 0.4) / 6)
    filled = [row for row in report["reliability"] if row["count"]]
    assert [(row["count"], row["accuracy"]) for row in filled] == [(2, 1.0), (4, 0.75)]
    assert [row["confidence"] for row in filled] == pytest.approx([0.6, 0.8])
    assert report["nll"] == pytest.approx(-(3 * math.log(0.8) + math.log(0.2) + 2 * math.log(0.6)) / 6)


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    # exact binary fractions: 0.5 is the edge of (0.25, 0.5] and (0.5, 0.75], 0.75 and 1.0 edges too
    confidence = torch.tensor([0.5, 0.625, 0.75, 1.0])
    probs = torch.stack([confidence, 1 - confidence], 1)
    rows = reliability(probs, torch.zeros(4, dtype=torch.long), bins=4)
    assert [row["count"] for row in rows] == [0, 1, 2, 1]


def test_temperature_scaling_recovers_the_temperature_that_made_a_model_overconfident():
    generator = torch.Generator().manual_seed(0)
    honest = torch.randn(20_000, 10, generator=generator) * 2
    labels = torch.multinomial(honest.softmax(1), 1, generator=generator).squeeze(1)  # calibrated by construction
    overconfident = honest * 2.5
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before, after = calibration_report(overconfident, labels), calibration_report(overconfident / temperature, labels)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 3
    assert (overconfident / temperature).argmax(1).equal(overconfident.argmax(1))


# ---- through `mnist eval` -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, cli_env):
    work = tmp_path_factory.mktemp("calibration")
    result = run_mnist(
        "train",
        "model=mlp",
        "epochs=2",
        "data.limit=700",
        "data.val_size=200",
        "batch_size=50",
        "device=cpu",
        cwd=work,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    return work, work / result.stdout.strip().splitlines()[-1]


def eval_json(work, env, *args):
    result = run_mnist("eval", "run=latest", "format=json", *args, cwd=work, env=env)
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


def test_eval_reports_calibration_draws_its_diagram_and_gates_on_it(small_run, cli_env):
    work, run = small_run
    result, report = eval_json(work, cli_env, "split=val", "max_ece=1")
    assert result.returncode == 0, result.stderr
    calibration = report["calibration"]
    assert calibration["temperature"] == 1 and 0 < calibration["ece"] < 1
    assert sum(row["count"] for row in calibration["reliability"]) == report["samples"] == 200
    assert calibration["nll"] == pytest.approx(report["loss"])  # the NLL is the cross-entropy
    with Image.open(run / "eval" / "val_calibration.png") as picture:
        picture.verify()
    result, report = eval_json(work, cli_env, "split=val", f"max_ece={calibration['ece'] / 2:.6f}")
    assert result.returncode == 1 and report["passed"] is False
    assert result.stderr.strip().startswith("expected calibration error") and "is above max_ece" in result.stderr


def test_calibrate_fits_on_val_stores_the_temperature_and_every_command_uses_it(small_run, cli_env):
    work, run = small_run
    before_predict = run_mnist("predict", "run=latest", "indices=[0,1,2]", "format=json", cwd=work, env=cli_env)
    result, report = eval_json(work, cli_env, "calibrate=true")
    assert result.returncode == 0, result.stderr
    stored = json.loads((run / "calibration.json").read_text())
    assert stored["fitted_on"] == "val" and stored["samples"] == 200
    assert stored["after"]["nll"] <= stored["before"]["nll"]
    assert report["calibration"]["temperature"] == pytest.approx(stored["temperature"])
    assert "fitted on 200 validation images" in result.stderr  # stdout is the JSON document alone
    _, val_report = eval_json(work, cli_env, "split=val")
    assert val_report["calibration"]["nll"] == pytest.approx(stored["after"]["nll"], rel=1e-4)
    after_predict = run_mnist("predict", "run=latest", "indices=[0,1,2]", "format=json", cwd=work, env=cli_env)
    old = json.loads(before_predict.stdout)["predictions"]
    new = json.loads(after_predict.stdout)["predictions"]
    assert [r["predicted"] for r in old] == [r["predicted"] for r in new]  # temperature never changes a class
    if abs(stored["temperature"] - 1) > 0.01:
        assert [r["confidence"] for r in old] != [r["confidence"] for r in new]


def tiny_run(workdir, env, *overrides: str) -> Path:
    """The run folder of an mlp trained in `workdir` with `overrides` (batch 50, CPU)."""
    result = run_mnist("train", "model=mlp", *overrides, "batch_size=50", "device=cpu", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


def test_calibrate_without_a_validation_split_and_a_damaged_calibration_file_are_one_sentence(tmp_path, cli_env):
    run = tiny_run(tmp_path, cli_env, "epochs=1", "data.limit=300", "data.val_size=0")
    result = run_mnist("eval", "run=latest", "calibrate=true", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "has no validation split" in result.stderr
    assert not (run / "calibration.json").exists()
    (run / "calibration.json").write_text('{"temperature": -3}')
    result = run_mnist("eval", "run=latest", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "holds no positive temperature; delete it, or fit it again with mnist eval calibrate=true."
    )


def test_a_validation_split_without_mistakes_stores_no_temperature_at_the_search_bound(tmp_path, cli_env):
    run = tiny_run(tmp_path, cli_env, "epochs=3", "data.limit=700", "data.val_size=60")
    val = run_mnist("eval", "run=latest", "split=val", "format=json", cwd=tmp_path, env=cli_env)
    if json.loads(val.stdout)["accuracy"] < 1:
        pytest.skip("this tiny run made a validation mistake; the case needs one that makes none")
    result = run_mnist("eval", "run=latest", "calibrate=true", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2 and "found no temperature" in result.stderr
    assert not (run / "calibration.json").exists()


def test_a_temperature_at_the_edge_of_the_search_is_recognised():
    from mnist_cli.inference.calibration import at_a_bound

    separable = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    assert at_a_bound(fit_temperature(separable, torch.tensor([0, 1])))
    assert not at_a_bound(2.5)
