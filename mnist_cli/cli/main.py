"""The `mnist` command: dispatch on the first word, hand the rest to that subcommand's Hydra app.

The rest of the front door, in the order a command line meets it: command_line.py parses it once,
hydra_app.py runs conf/<command>.yaml's Hydra app (run_claim.py claims the run folder first,
settle.py finishes the config), commands.py runs the subcommand. Nothing here imports torch, nor
Hydra before a subcommand needs it: `mnist --help` and `mnist train --help` stay fast.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from mnist_cli import streams
from mnist_cli.errors import UserError

COMMANDS = {
    "train": "train a model on MNIST or FashionMNIST; writes a run folder under outputs/train/",
    "eval": "metrics of a trained run on a split; exit 1 below min_accuracy (CI gate)",
    "predict": "classify image files or dataset samples with a trained run",
    "export": "a trained run as one file (torch.export .pt2, ONNX or TorchScript): mnist export run=latest",
    "report": "leaderboard of the runs below a folder: mnist report outputs/ sort=best_val_loss top=10",
    "serve": "a trained run behind HTTP: a page to draw digits on, POST /predict: mnist serve run=latest",
}

USAGE = f"""usage: mnist <command> [KEY=VALUE ...] [-m] [--cfg job] [--help]

Train, evaluate and run small image classifiers on MNIST, FashionMNIST, the MNIST family and your own image folders.

commands:
{chr(10).join(f"  {name:<8} {text}" for name, text in COMMANDS.items())}

examples:
  mnist train                                   # MNIST, cnn, adam, device=auto
  mnist train model=lenet optimizer=sgd optimizer.lr=0.05 epochs=5
  mnist train -m model=mlp,cnn optimizer=sgd,adam
  mnist train --help                            # config groups and every key
  mnist eval run=latest min_accuracy=0.99
  mnist predict run=latest inputs=[digit.png,photos/]
  mnist report outputs/multirun/2026-11-23/10-20-11-x9f2
  mnist serve run=latest                        # http://127.0.0.1:8000/: draw a digit

data: data.root=PATH or MNIST_DATA_ROOT=PATH (a folder holding MNIST/raw/, FashionMNIST/raw/, ...);
      your own images: dataset=folder dataset.path=DIR (one folder per class)
"""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit code."""
    streams.guard()
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        lost = streams.lost_output()
    except BrokenPipeError:
        return streams.closed_pipe()
    if lost is None:
        return code
    streams.say_output_lost(lost)
    return code or streams.EX_IOERR  # a failed gate (1) or a refusal (2) stays what it is


def _main(args: List[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        from mnist_cli import __version__

        print(f"mnist-cli {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(
            f"mnist: '{command}' is not a command; choose one of: {', '.join(COMMANDS)} (see mnist --help).",
            file=sys.stderr,
        )
        return 2
    try:
        if command == "report":  # reads run folders only: no Hydra app
            from mnist_cli.runs.report import report_command

            return report_command(args[1:])
        from mnist_cli.cli.command_line import parse_command_line
        from mnist_cli.cli.hydra_app import run_hydra_app

        return run_hydra_app(parse_command_line(command, args[1:]))
    except UserError as error:  # found before Hydra starts (e.g. resume= names no run)
        print(f"mnist {command}: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return streams.closed_pipe()
    except KeyboardInterrupt:  # Ctrl-C before the command's own work began
        print(f"mnist {command}: interrupted by Ctrl-C.", file=sys.stderr)
        return 130
