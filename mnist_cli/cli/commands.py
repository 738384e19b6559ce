"""One runner per subcommand with a Hydra app: each takes the settled, checked config and Hydra's runtime
config, and returns (the value a sweeper optimises or None, the exit code). `mnist report` has no Hydra
app: cli/main.py calls runs/report.py directly.
"""

from __future__ import annotations

from pathlib import Path

from mnist_cli.errors import UserError


def run_train(cfg, runtime):
    """Train one run, fresh or continued (resume=); returns (the metric a sweeper optimises, 0)."""
    from mnist_cli.runs.folder import RunFolder
    from mnist_cli.runs.locks import lock_run
    from mnist_cli.runs.resume import start_of
    from mnist_cli.search.trial import study_trial
    from mnist_cli.training import loop

    run_dir = Path(runtime.runtime.output_dir)
    lock_run(run_dir)  # held until the process ends; a resumed run's was taken before Hydra started
    start = start_of(cfg, list(runtime.overrides.task))
    trial = None if start.resumed else study_trial(runtime.sweeper, run_dir)
    value = loop.train(start, RunFolder(run_dir), trial)
    return (float("nan") if value is None else value), 0


def run_eval(cfg, runtime):
    """Returns (None, 0, or 1 when the accuracy is below min_accuracy)."""
    from mnist_cli.inference.evaluate import evaluate_command

    return None, evaluate_command(cfg)


def run_predict(cfg, runtime):
    """Returns (None, the exit code of predicting)."""
    from mnist_cli.inference.predict import predict_command

    return None, predict_command(cfg, runtime.runtime.output_dir)


def run_export(cfg, runtime):
    """Returns (None, the exit code of exporting)."""
    from mnist_cli.inference.export import export_command

    return None, export_command(cfg)


def run_serve(cfg, runtime):
    """Returns (None, the exit code once the server stops)."""
    try:
        from mnist_cli.serving.serve import serve_command
    except ModuleNotFoundError as error:  # starlette, uvicorn, python-multipart: the extra mnist-cli[serve]
        raise UserError(f"mnist serve needs {error.name}, which is not installed: pip install -e '.[serve]'.") from None
    return None, serve_command(cfg)


RUNNERS = {"train": run_train, "eval": run_eval, "predict": run_predict, "export": run_export, "serve": run_serve}
