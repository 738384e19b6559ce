"""PNG pictures for humans: confusion-matrix heat map, most confident mistakes, image grids.

matplotlib with the headless Agg backend; imported only when a picture is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from mnist_cli.runs import metrics
from mnist_cli.runs.atomic import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def confusion_png(path: Path, report: Dict) -> Path:
    """A labelled heat map of report['confusion_matrix'] with counts in the cells."""
    plt = _pyplot()
    matrix = report["confusion_matrix"]
    classes = report["classes"]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * n, 0.8 + 0.6 * n))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report['dataset']} {report['split']}: accuracy {report['accuracy']:.2%}")
    peak = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > peak / 2 else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def calibration_png(path: Path, report: Dict) -> Path:
    """A reliability diagram of report["calibration"]: accuracy against confidence per bin, the diagonal
    (honest confidence), and how many predictions each bin holds."""
    plt = _pyplot()
    rows = report["calibration"]["reliability"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    width = rows[0]["upper"] - rows[0]["lower"]
    filled = [r for r in rows if r["count"]]
    top.bar(
        [r["lower"] for r in filled],
        [r["accuracy"] for r in filled],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        [r["lower"] for r in filled],
        [r["confidence"] - r["accuracy"] for r in filled],
        width=width,
        bottom=[r["accuracy"] for r in filled],
        align="edge",
        color="tab:red",
        alpha=0.35,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    calibration = report["calibration"]
    top.set_title(
        f"{report['dataset']} {report['split']}: ECE {calibration['ece']:.2%}, NLL {calibration['nll']:.4f}"
        + (f", T={calibration['temperature']:.3g}" if calibration.get("temperature") else "")
    )
    bottom.bar([r["lower"] for r in rows], [r["count"] for r in rows], width=width, align="edge", color="grey")
    bottom.set_yscale("symlog")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("predictions")
    bottom.set_xlim(0, 1)
    return _save(fig, path)


def image_grid_png(path: Path, images: Sequence, titles: List[str], columns: int = 8, limit: int = 100) -> Path:
    """The first `limit` uint8 28x28 images in a grid, each under its title, with a line saying how many
    were left out; returns `path`. One imshow of a mosaic: a subplot per image took 67 s for 2,000."""
    import numpy as np

    plt = _pyplot()
    shown = list(images[:limit])
    rows = -(-max(1, len(shown)) // columns)
    width, height = 36, 40  # a cell in image pixels: the 28x28 image, 4 px either side, room for the title above
    mosaic = np.full((rows * height, columns * width), np.nan)
    for i, image in enumerate(shown):
        top, left = (i // columns) * height + height - 30, (i % columns) * width + 4
        mosaic[top : top + 28, left : left + 28] = image
    fig = plt.figure(figsize=(1.6 * columns, 1.6 * rows * height / width))  # 1.6 inches a cell, as the mosaic's aspect
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    for i, title in enumerate(titles[: len(shown)]):
        lines = [
            line if len(line) <= 24 else "…" + line[-23:] for line in title.split("\n")
        ]  # keep the ends of long names
        x, y = (i % columns) * width + 18, (i // columns) * height + height - 31
        ax.text(x, y, "\n".join(lines), ha="center", va="bottom", fontsize=7)
    if not shown:
        ax.text(columns * width / 2, height / 2, "no mistakes", ha="center", va="center")
    if len(images) > len(shown):
        note = f"the first {len(shown)} of {len(images)} images; {len(images) - len(shown)} left out"
        ax.text(4, rows * height + 2, note, va="top", fontsize=9)
    return _save(fig, path)


def errors_png(path: Path, split, logits, classes: List[str], limit: int = 32) -> Path:
    """The `limit` most confidently misclassified images, titled true -> predicted (confidence)."""
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != split.labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:limit].cpu()
    images = [split.images[i].cpu().numpy() for i in worst]
    titles = [
        f"true {classes[split.labels[i]]}\npred {classes[predicted[i]]} ({confidence[i]:.2f})" for i in worst.tolist()
    ]
    return image_grid_png(path, images, titles)


def curves_png(path: Path, records: List[Dict]) -> Path:
    """Validation accuracy per epoch of each run in `records` (leaderboard rows), on one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for rank, record in enumerate(records, 1):
        epochs = metrics.read_epochs(Path(record["run"]))
        if not epochs:
            continue
        label = " ".join(f"{k}={v}" for k, v in record["overrides"].items()) or Path(record["run"]).name
        ax.plot([e["epoch"] for e in epochs], [e["val_accuracy"] for e in epochs], marker="o", label=f"#{rank} {label}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
