"""`mnist predict`: classify image files or dataset samples; one row per input, errors included.

Writes predictions.csv and predictions.jsonl (and inputs.png with save_inputs=true) into the
predict run folder. Exit 0 when every input was predicted, 1 when some failed, 2 when none could.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from omegaconf import DictConfig

from mnist_cli import console, figures, runs
from mnist_cli.checkpoints import load_trained
from mnist_cli.devices import resolve_device
from mnist_cli.errors import UserError
from mnist_cli.images import ImageError, find_images, prepare
from mnist_cli.inference import load_split, probabilities, to_rows

CSV_COLUMNS = ("input", "label", "predicted", "confidence", "topk", "error")
INPUTS_PNG_LIMIT = 100  # inputs drawn in inputs.png: a picture of thousands is unreadable and took minutes


def collect_inputs(cfg: DictConfig, trained, device) -> List[Dict]:
    """One entry per input, in order: {"input", "image"} or {"input", "error"}; samples add "label"."""
    entries: List[Dict] = []
    for path in find_images(list(cfg.inputs), cfg.recursive):
        try:
            entries.append({"input": str(path), "image": prepare(path, trained.config.dataset.name)})
        except ImageError as error:
            entries.append({"input": str(path), "error": str(error)})
    if cfg.indices:
        split = load_split(trained, cfg, device)
        for index in cfg.indices:
            if not 0 <= index < len(split):
                raise UserError(f"indices: {index} is outside the {cfg.split} split (0..{len(split) - 1}).")
            entries.append({
                "input": f"{cfg.split}[{index}]",
                "image": split.images[index].cpu().numpy(),
                "label": trained.classes[int(split.labels[index])],
            })  # fmt: skip
    return entries


def write_rows(out: Path, rows: List[Dict]) -> None:
    """predictions.jsonl (rows as they are) and predictions.csv (topk as `class:p;class:p`) in `out`."""
    runs.write_jsonl(out / "predictions.jsonl", rows)
    flat = [{**row, "topk": ";".join(f"{t['class']}:{t['probability']:.4f}" for t in row["topk"])} for row in rows]
    runs.write_csv(out / "predictions.csv", flat, CSV_COLUMNS)


def show_rows(rows: List[Dict], topk: int) -> None:
    from rich.table import Table

    table = Table()
    for column in ("input", "predicted", "confidence", f"top {topk}"):
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for row in rows:
        if row["error"]:
            table.add_row(row["input"], "[red]error[/red]", "", row["error"])
            continue
        label = f" (true {row['label']})" if row["label"] is not None else ""
        top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in row["topk"])
        table.add_row(row["input"], f"{row['predicted']}{label}", f"{row['confidence']:.3f}", top)
    console.console.print(table)


def predict_command(cfg: DictConfig, run_dir: Path) -> int:
    """Run `mnist predict`; returns the exit code."""
    device = resolve_device(cfg.device)
    trained = load_trained(cfg.run, cfg.outputs_dir, device)
    entries = collect_inputs(cfg, trained, device)
    if not entries:
        raise UserError(f"inputs={list(cfg.inputs)} holds no image files.")
    images = [e["image"] for e in entries if "image" in e]
    probs = probabilities(trained, images, device, cfg.batch_size)
    rows = to_rows(entries, probs, trained.classes, cfg.topk)

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out, rows)
    if cfg.save_inputs and images:
        titles = [Path(e["input"]).name for e in entries if "image" in e]
        figures.image_grid_png(out / "inputs.png", images, titles, limit=INPUTS_PNG_LIMIT)
    failed = sum(1 for r in rows if r["error"])
    if cfg.format == "json":
        print(json.dumps({"run": str(trained.run_dir), "checkpoint": str(trained.checkpoint_path), "output_dir": str(out), "predictions": rows}, indent=2))
    else:
        show_rows(rows, cfg.topk)
        console.console.print(f"{len(rows) - failed} predicted, {failed} failed; wrote {out / 'predictions.csv'}")
        if cfg.save_inputs and len(images) > INPUTS_PNG_LIMIT:
            console.console.print(f"inputs.png shows the first {INPUTS_PNG_LIMIT} of {len(images)} inputs.")
    if not images:
        return 2
    return 1 if failed else 0
