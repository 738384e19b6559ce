"""`mnist eval`: a checkpoint's loss, accuracy, per-class metrics, confusion matrix and calibration on a split.

Writes <run>/eval/<split>.json, <split>_confusion.png, <split>_errors.png and <split>_calibration.png; exits 1
when accuracy is below min_accuracy or the expected calibration error above max_ece (the CI gates).
With calibrate=true it first fits a temperature on the run's validation split (calibration.py) and stores it
in <run>/calibration.json, which eval, predict, serve and export then apply.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from mnist_cli import console
from mnist_cli.errors import UserError, WriteFailed
from mnist_cli.inference import ensembles
from mnist_cli.inference.calibration import at_a_bound, calibration_report, fit_temperature
from mnist_cli.inference.predictions import load_split, precision, predict_logits
from mnist_cli.runs import figures
from mnist_cli.runs.atomic import write_json
from mnist_cli.runs.folder import RunFolder
from mnist_cli.training.devices import resolve_device
from mnist_cli.training.loggers import log_evaluation


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list) -> Dict:
    """Loss, accuracy, macro F1, per-class precision/recall/F1/support, and the confusion matrix
    (rows: true class, columns: predicted class)."""
    n_classes = len(classes)
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * n_classes + predicted, minlength=n_classes**2).view(n_classes, n_classes)
    confusion = confusion.cpu().double()
    hits, support, claimed = confusion.diag(), confusion.sum(1), confusion.sum(0)
    precision = torch.where(claimed > 0, hits / claimed.clamp(min=1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.zeros_like(hits))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(hits)
    )
    return {
        "samples": len(labels),
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (hits.sum() / len(labels)).item(),
        "macro_f1": f1.mean().item(),
        "per_class": [
            {"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
            for name, p, r, f, s in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())
        ],
        "confusion_matrix": confusion.long().tolist(),
    }


def show_report(report: Dict) -> None:
    from rich.table import Table

    autocast = f" ({report['precision']} autocast, as the run trained)" if report["precision"] != "fp32" else ""
    members = report.get("members")
    source = f"an ensemble of {len(members)} runs" if members else escape(report["checkpoint"])
    console.console.print(  # soft_wrap: the checkpoint's path stays on one line
        f"[bold]{report['dataset']} {report['split']}[/bold] ({report['samples']} images), "
        f"{report['model']} from {source}{autocast}\n"
        f"accuracy [bold]{report['accuracy']:.2%}[/bold]  loss {report['loss']:.4f}  macro F1 {report['macro_f1']:.4f}  "
        f"ECE {report['calibration']['ece']:.2%}"
        + (
            f" (temperature {report['calibration']['temperature']:.3g})"
            if report["calibration"]["temperature"] != 1
            else ""
        ),
        soft_wrap=True,
    )
    for member in members or []:
        console.say(f"  member accuracy {member['accuracy']:.2%}: {member['run']}")
    per_class = Table(title="per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        per_class.add_row(
            escape(row["class"]),
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    console.console.print(per_class)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in report["classes"]:
        confusion.add_column(escape(name[:7]), justify="right")
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        diagonal = report["classes"].index(name)
        confusion.add_row(
            escape(name), *(f"[bold]{v}[/bold]" if i == diagonal else (str(v) if v else "·") for i, v in enumerate(row))
        )
    console.console.print(confusion)


def evaluate_command(cfg: DictConfig) -> int:
    """Run `mnist eval`; returns the exit code (1 when below min_accuracy)."""
    device = resolve_device(cfg.device)
    trained = ensembles.load_model(cfg, device)
    if cfg.calibrate and trained.members:
        raise UserError("calibrate=true fits one run's temperature; calibrate each member, then evaluate the ensemble.")
    split = load_split(trained, cfg, device)  # first: a split the run lacks is refused before anything is stored
    if cfg.calibrate:
        trained.temperature = calibrate(trained, cfg, device)
    ensemble = bool(trained.members)
    if ensemble:  # each member once: its own accuracy below, and the ensemble's from the same logits
        member_logits = [predict_logits(m, split.images, cfg.batch_size) for m in trained.members]
        logits = ensembles.combined(member_logits)
    else:
        logits = predict_logits(trained, split.images, cfg.batch_size)
    report = {
        "run": None if ensemble else str(trained.run_dir),
        "checkpoint": None if ensemble else str(trained.checkpoint_path.resolve()),  # absolute, as "run" is
        "epoch": None if ensemble else trained.checkpoint["epoch"],
        "split": cfg.split,
        "dataset": trained.config.dataset.name,
        "model": trained.config.model.name,
        "precision": precision(trained),  # as the run trained and validated: bf16 runs are evaluated in bf16 autocast
        "classes": trained.classes,
        **classification_report(logits, split.labels, trained.classes),
        "calibration": {"temperature": trained.temperature, **calibration_report(logits, split.labels)},
    }
    if ensemble:  # each member's own accuracy beside the ensemble's
        report["members"] = [
            {
                "run": str(m.run_dir),
                "checkpoint": str(m.checkpoint_path.resolve()),
                "accuracy": (own.argmax(1) == split.labels).double().mean().item(),
            }
            for m, own in zip(trained.members, member_logits)
        ]
    accurate = cfg.min_accuracy is None or report["accuracy"] >= cfg.min_accuracy
    honest = cfg.max_ece is None or report["calibration"]["ece"] <= cfg.max_ece
    passed = accurate and honest
    report["min_accuracy"] = cfg.min_accuracy
    report["max_ece"] = cfg.max_ece
    report["passed"] = passed

    if ensemble:
        folder = ensembles.ensemble_folder(cfg.outputs_dir)
        ensembles.write_members(folder, trained)
        out = folder / "eval"
    else:
        out = RunFolder(trained.run_dir).eval
    unwritten = write_evaluation(out, report, split, logits, trained)
    if cfg.format == "json":
        print(json.dumps(report, indent=2))
    else:
        show_report(report)
        if unwritten is None:
            console.say(
                f"wrote {out / (cfg.split + '.json')} and the confusion / errors / calibration pictures"
            )  # say: a path is never wrapped
    if unwritten is not None:  # the result above stands (and the gate below still counts): only the files are missing
        print(f"warning: {unwritten} The result above is printed, not saved.", file=sys.stderr)
    if not accurate:
        print(f"accuracy {report['accuracy']:.4f} is below min_accuracy {cfg.min_accuracy}", file=sys.stderr)
    if not honest:
        print(
            f"expected calibration error {report['calibration']['ece']:.4f} is above max_ece {cfg.max_ece}",
            file=sys.stderr,
        )
    return 0 if passed else 1


def calibrate(trained, cfg: DictConfig, device) -> float:
    """Fit the temperature on the run's validation split, store it in <run>/calibration.json with the
    validation NLL and ECE before and after, say so, and return it."""
    val = load_split(trained, OmegaConf.merge(cfg, {"split": "val"}), device)
    raw = predict_logits(trained, val.images, cfg.batch_size, calibrated=False)
    temperature = fit_temperature(raw, val.labels)
    if at_a_bound(temperature):
        raise UserError(
            f"calibrate=true found no temperature: the validation NLL keeps falling up to the search's bound "
            f"(T={temperature:.3g}), as it does when the model makes no confident mistakes on those {len(val)} "
            "images; nothing was stored."
        )
    before, after = calibration_report(raw, val.labels), calibration_report(raw / temperature, val.labels)
    record = {
        "temperature": temperature,
        "fitted_on": "val",
        "samples": len(val),
        "checkpoint": str(trained.checkpoint_path.resolve()),
        "before": {"nll": before["nll"], "ece": before["ece"]},
        "after": {"nll": after["nll"], "ece": after["ece"]},
    }
    path = RunFolder(trained.run_dir).calibration
    try:
        write_json(path, record)
    except WriteFailed as error:
        raise UserError(str(error)) from None
    said = (
        f"temperature {temperature:.4g} fitted on {len(val)} validation images: NLL {before['nll']:.4f} -> "
        f"{after['nll']:.4f}, ECE {before['ece']:.2%} -> {after['ece']:.2%}; stored in {path}"
    )
    if cfg.format == "json":  # stdout holds the one JSON document
        print(said, file=sys.stderr)
    else:
        console.say(said)
    return temperature


def write_evaluation(out: Path, report: Dict, split, logits: torch.Tensor, trained) -> Optional[str]:
    """Write <split>.json and its pictures into `out` and add them to the run's loggers; returns None, or
    a sentence saying what could not be written (a read-only run folder): report["files"] is then null."""
    name = report["split"]
    try:
        out.mkdir(exist_ok=True)
        pictures = {
            "confusion": figures.confusion_png(out / f"{name}_confusion.png", report),
            "errors": figures.errors_png(out / f"{name}_errors.png", split, logits, trained.classes),
            "calibration": figures.calibration_png(out / f"{name}_calibration.png", report),
        }
        report["files"] = {key: str(path) for key, path in pictures.items()}
        write_json(out / f"{name}.json", report)
    except (OSError, WriteFailed) as error:  # WriteFailed: atomic_write's sentence, naming the file
        report["files"] = None
        return (
            f"could not write the evaluation into {out} ({error.strerror})."
            if isinstance(error, OSError)
            else str(error)
        )
    if not trained.members:
        log_evaluation(
            trained.run_dir, trained.config.get("logger"), report, pictures
        )  # the run's TensorBoard / MLflow
    return None
