"""PNG pictures for humans: confusion-matrix heat map, most confident mistakes, image grids.

matplotlib with the headless Agg backend; imported only when a picture is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from mnist_cli import runs


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
    runs.atomic_write(path, lambda f: f.write(buffer.getvalue()))
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
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > peak / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def image_grid_png(path: Path, images: Sequence, titles: List[str], columns: int = 8) -> Path:
    """uint8 28x28 images in a grid, each with its title."""
    plt = _pyplot()
    count = max(1, len(images))
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
    if not images:
        axes[0][0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
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
        epochs = runs.read_metrics(Path(record["run"]))
        if not epochs:
            continue
        label = " ".join(f"{k}={v}" for k, v in record["overrides"].items()) or Path(record["run"]).name
        ax.plot([e["epoch"] for e in epochs], [e["val_accuracy"] for e in epochs], marker="o", label=f"#{rank} {label}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
