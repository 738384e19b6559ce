"""`mnist predict`: classify image files or dataset samples; one row per input, errors included.

Writes predictions.csv and predictions.jsonl (and inputs.png with save_inputs=true) into the
predict run folder. Exit 0 when every input was predicted, 1 when some failed, 2 when none could.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig
from rich.markup import escape

from mnist_cli import console
from mnist_cli.datasets.images import ImageError, find_images, prepare
from mnist_cli.errors import UserError
from mnist_cli.inference import ensembles
from mnist_cli.inference.predictions import load_positions, probabilities, to_rows
from mnist_cli.runs import figures
from mnist_cli.runs.atomic import printable, write_csv, write_jsonl
from mnist_cli.training.devices import resolve_device

CSV_COLUMNS = ("input", "label", "predicted", "confidence", "topk", "error")
INPUTS_PNG_LIMIT = 100  # inputs drawn in inputs.png: a picture of thousands is unreadable and took minutes


def collect_inputs(cfg: DictConfig, trained, device) -> List[Dict]:
    """One entry per input, in order: {"input", "image"} or {"input", "error"}; samples add "label"."""
    entries: List[Dict] = []
    for path in find_images(list(cfg.inputs), cfg.recursive):
        name = printable(str(path))  # a name that is not UTF-8 still gets its row, written as caf\xe9.png
        try:
            entries.append({"input": name, "image": prepare(path, trained.config.dataset.prepare)})
        except ImageError as error:
            entries.append({"input": name, "error": str(error)})
    if cfg.indices:
        entries += sample_entries(cfg, trained, device)
    return entries


def sample_entries(cfg: DictConfig, trained, device) -> List[Dict]:
    """Entries for indices=: positions in the dataset's own file (test: the test file; train and val: the
    training file, as torchvision numbers them), each required to lie in the run's `split`."""
    split, positions, used = load_positions(trained, cfg, device)
    row_of = {position: row for row, position in enumerate(positions.tolist())}
    entries = []
    for index in cfg.indices:
        if index not in row_of:
            raise UserError(outside_split(index, cfg.split, used))
        row = row_of[index]
        entries.append(
            {
                "input": f"{cfg.split}[{index}]",
                "image": split.images[row].cpu().numpy(),
                "label": trained.classes[int(split.labels[row])],
            }
        )
    return entries


def outside_split(index: int, split: str, used: int) -> str:
    """Why dataset position `index` is not in the run's `split` (of `used` images in its file)."""
    images = "test" if split == "test" else "training"
    if not 0 <= index < used:
        return f"indices: {index} is outside the run's {used} {images} images (0..{used - 1})."
    other = "val" if split == "train" else "train"
    return f"indices: image {index} of the training file is in the run's {other} split, not its {split} split; use split={other} for it."


def write_rows(out: Path, rows: List[Dict]) -> None:
    """predictions.jsonl (rows as they are) and predictions.csv (topk as `class:p;class:p`) in `out`."""
    write_jsonl(out / "predictions.jsonl", rows)
    flat = [{**row, "topk": ";".join(f"{t['class']}:{t['probability']:.4f}" for t in row["topk"])} for row in rows]
    write_csv(out / "predictions.csv", flat, CSV_COLUMNS)


def common_folder(rows: List[Dict]) -> Optional[str]:
    """The folder holding every image file of `rows` (rows with a label are dataset samples); None if none."""
    files = [os.path.abspath(row["input"]) for row in rows if row["label"] is None]
    return os.path.commonpath([os.path.dirname(f) for f in files]) if files else None


def show_rows(rows: List[Dict], topk: int) -> None:
    """The table: image files by their path below the folder that holds them all (said above the
    table), so the part of a long path that differs is what shows."""
    from rich.table import Table

    folder = common_folder(rows)
    if folder is not None:
        console.say(f"image files in {os.path.join(folder, '')}")  # with its trailing slash
    table = Table()
    for column in ("input", "predicted", "confidence", f"top {topk}"):
        overflow = "ellipsis" if column in ("predicted", "confidence") else "fold"  # names and errors wrap, never cut
        table.add_column(column, justify="right" if column == "confidence" else "left", overflow=overflow)
    for row in rows:
        name = os.path.relpath(os.path.abspath(row["input"]), folder) if row["label"] is None else row["input"]
        if row["error"]:
            table.add_row(escape(name), "[red]error[/red]", "", escape(row["error"]))
            continue
        label = f" (true {row['label']})" if row["label"] is not None else ""
        top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in row["topk"])
        table.add_row(escape(name), escape(f"{row['predicted']}{label}"), f"{row['confidence']:.3f}", escape(top))
    console.console.print(table)


def predict_command(cfg: DictConfig, run_dir: Path) -> int:
    """Run `mnist predict`; returns the exit code."""
    device = resolve_device(cfg.device)
    trained = ensembles.load_model(cfg, device)
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
        print(
            json.dumps(
                {
                    "run": str(trained.run_dir),
                    "checkpoint": str(trained.checkpoint_path),
                    "output_dir": str(out),
                    "predictions": rows,
                },
                indent=2,
            )
        )
    else:
        show_rows(rows, cfg.topk)
        console.say(
            f"{len(rows) - failed} predicted, {failed} failed; wrote {out / 'predictions.csv'}"
        )  # say: a path is never wrapped
        if cfg.save_inputs and len(images) > INPUTS_PNG_LIMIT:
            console.say(f"inputs.png shows the first {INPUTS_PNG_LIMIT} of {len(images)} inputs.")
    if not images:
        return 2
    return 1 if failed else 0
