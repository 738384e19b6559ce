"""What a run shows the user: rich tables and a progress bar in a terminal, plain lines otherwise.

Every line shown is also logged, so train.log holds the same story as the screen.
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from typing import Dict, Iterator, List

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

log = logging.getLogger("mnist_cli")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader of our output went away (`mnist eval ... | head`): let the CLI handle it as
        it does for print() (rich's own handler exits 1, the failed-gate code)."""
        raise BrokenPipeError


console = _Console(highlight=False)
if not console.is_terminal:
    console.width = max(console.width, 160)  # CI logs: do not squeeze tables into 80 columns


def silence() -> None:
    """Print nothing more (the other processes of a torchrun job; the main one speaks)."""
    console.quiet = True


def say(message: str) -> None:
    """Print one line and log it."""
    console.print(message, markup=False, soft_wrap=True)  # never wrap: CI logs and scripts read these
    log.info(message)


def layer_table(rows: List[Dict], total_params: int, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape", justify="right")
    table.add_column("params", justify="right")
    for row in rows:
        table.add_row(row["name"], row["type"], " x ".join(map(str, row["output"])), f"{row['params']:,}")
    table.add_section()
    table.add_row("total", "", "", f"{total_params:,}")
    return table


def render_text(table: Table) -> str:
    """The table as plain text, for files."""
    recorder = Console(width=100, record=True, file=io.StringIO())
    recorder.print(table)
    return recorder.export_text()


def show_table(table: Table) -> None:
    console.print(table)


def epoch_line(m: Dict, epochs: int) -> str:
    averaged = " (ema)" if m.get("weights") == "ema" else ""  # ema_decay: the average validated better
    validation = (
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_accuracy']:.2%}{averaged}  "
        if m["val_accuracy"] is not None
        else ""
    )
    return (
        f"epoch {m['epoch']:>{len(str(epochs))}}/{epochs}  "
        f"train_loss {m['train_loss']:.4f}  train_acc {m['train_accuracy']:.2%}  "
        f"{validation}lr {m['lr']:.2e}  {m['seconds']:.1f}s"
    )


@contextmanager
def batch_progress(description: str, total: int, completed: int = 0) -> Iterator:
    """Yield advance(n=1); a live bar over the batches (or files) in a terminal, nothing otherwise (CI logs)."""
    if not console.is_terminal:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda n=1: progress.advance(task, n)
