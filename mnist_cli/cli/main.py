"""The `mnist` command: dispatch on the first word, hand the rest to that subcommand's Hydra app.

`@hydra.main` parses sys.argv itself, so each subcommand gets its own primary config
(conf/<command>.yaml) and keeps -m, --cfg, --help and hydra.* overrides. Nothing here imports
torch: `mnist --help` and `mnist train --help` stay fast.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

from mnist_cli import streams
from mnist_cli.errors import UserError, first_line

COMMANDS = {
    "train": "train a model on MNIST or FashionMNIST; writes a run folder under outputs/train/",
    "eval": "metrics of a trained run on a split; exit 1 below min_accuracy (CI gate)",
    "predict": "classify image files or dataset samples with a trained run",
    "export": "a trained run as one file (torch.export .pt2, ONNX or TorchScript): mnist export run=latest",
    "report": "leaderboard of the runs below a folder: mnist report outputs/ sort=best_val_loss top=10",
    "serve": "a trained run behind HTTP: a page to draw digits on, POST /predict: mnist serve run=latest",
}

USAGE = f"""usage: mnist <command> [KEY=VALUE ...] [-m] [--cfg job] [--help]

Train, evaluate and run small image classifiers on MNIST and FashionMNIST.

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

data: data.root=PATH or MNIST_DATA_ROOT=PATH (a folder holding MNIST/raw/, FashionMNIST/raw/)
"""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit code."""
    streams.guard()
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        lost = streams.lost_output()
    except BrokenPipeError:
        return _closed_pipe()
    if lost is None:
        return code
    _say_output_lost(lost)
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
        return run_hydra_app(command, _non_ascii_quoted(args[1:]))
    except UserError as error:  # found before Hydra starts (e.g. resume= names no run)
        print(f"mnist {command}: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:  # Ctrl-C before the command's own work began
        print(f"mnist {command}: interrupted by Ctrl-C.", file=sys.stderr)
        return 130


def _say_output_lost(why: str) -> None:
    """Standard output could not be written (a full disk, /dev/full): say so on stderr. The exit code is then 74
    (EX_IOERR) where it would have been 0, never 1, the failed-gate code of `mnist eval`."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere at exit
    print(f"mnist: the command's work is done, but its output could not be written ({why}).", file=sys.stderr)


# The parts of a value that Hydra's grammar reads as structure; what lies between them is plain text
_STRUCTURE = re.compile(r"""([\[\]{}(),='"])""")


def _non_ascii_quoted(args: List[str]) -> List[str]:
    """The arguments with each plain-text part of a value that holds a non-ASCII letter put in quotes:
    Hydra's grammar takes only ASCII letters unquoted, and `inputs=[scans/zïffer.png]` means no more than
    `inputs=['scans/zïffer.png']`. A word with quotes of its own, or all ASCII, stays as written."""
    quoted = []
    for word in args:
        key, equals, value = word.partition("=")
        if word.startswith("-") or not equals or value.isascii() or "'" in value or '"' in value or "${" in value:
            quoted.append(word)
            continue
        parts = _STRUCTURE.split(value)
        quoted.append(
            key
            + equals
            + "".join(
                f"'{part.strip()}'" if not part.isascii() and not _STRUCTURE.fullmatch(part) else part for part in parts
            )
        )
    return quoted


def _closed_pipe() -> int:
    """Output piped into `head` and the like, whose reader went away: stop quietly, as `cat` does.
    Returns 141 (128 + SIGPIPE), never 1, the failed-gate code of `mnist eval`."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _multirun(args: List[str]) -> bool:
    return "-m" in args or "--multirun" in args


def _train(cfg, runtime):
    """Returns (the metric a sweeper optimises, exit code)."""
    from mnist_cli.runs import folder as runs
    from mnist_cli.search import launchers

    run_dir = Path(runtime.runtime.output_dir)
    runs.lock_run(run_dir)  # held until the process ends; a resumed run's was taken before Hydra started
    jobs = launchers.jobs_at_once(runtime.launcher) if launchers.on_this_machine(runtime.launcher) else 1
    if cfg.threads is None and jobs > 1:  # N jobs on N cores: no oversubscription
        cfg.threads = max(1, (os.cpu_count() or 1) // jobs)
    if cfg.logger.mlflow is not None and cfg.logger.mlflow.experiment is None and runtime.mode.name == "MULTIRUN":
        from mnist_cli.training.loggers import default_experiment  # a sweep's jobs share one MLflow experiment

        sweep, usual = Path(runtime.sweep.dir), Path(cfg.outputs_dir) / "multirun"
        cfg.logger.mlflow.experiment = default_experiment(
            cfg.dataset.name, str(sweep.relative_to(usual) if sweep.is_relative_to(usual) else sweep)
        )
    from mnist_cli.training import loop as train  # torch is imported here, after the config is known good

    overrides = list(runtime.overrides.task)
    if cfg.resume is None:
        from mnist_cli.search.trial import study_trial

        value = train.train(cfg, run_dir=run_dir, overrides=overrides, trial=study_trial(runtime.sweeper, run_dir))
    else:
        from mnist_cli.runs.resume import continue_run

        start = continue_run(cfg, overrides)
        value = train.train(start.config, run_dir, overrides, start.state, start.overrides)
    return (float("nan") if value is None else value), 0


def _eval(cfg, runtime):
    from mnist_cli.inference.evaluate import evaluate_command

    return None, evaluate_command(cfg)


def _predict(cfg, runtime):
    from mnist_cli.inference.predict import predict_command

    return None, predict_command(cfg, runtime.runtime.output_dir)


def _export(cfg, runtime):
    from mnist_cli.inference.export import export_command

    return None, export_command(cfg)


def _serve(cfg, runtime):
    try:
        from mnist_cli.serving.serve import serve_command
    except ModuleNotFoundError as error:  # starlette, uvicorn, python-multipart: the extra mnist-cli[serve]
        raise UserError(f"mnist serve needs {error.name}, which is not installed: pip install -e '.[serve]'.") from None
    return None, serve_command(cfg)


RUNNERS = {"train": _train, "eval": _eval, "predict": _predict, "export": _export, "serve": _serve}


def _overrides(args: List[str]) -> list:
    """The KEY=VALUE arguments parsed as Hydra parses them (quotes removed); [] when Hydra would
    refuse them anyway (it then says why itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:
        return []


# Hydra's options that take the next word as their value (--info's is optional: one of its topics)
_OPTIONS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _override_words(args: List[str]) -> List[str]:
    """The words of a command line that are overrides: Hydra's options and their values left out."""
    after = ["", *args]
    return [
        word
        for before, word in zip(after, args)
        if not word.startswith("-")
        and before not in _OPTIONS_WITH_VALUE
        and not (before in ("--info", "-i") and word in _INFO_TOPICS)
    ]


def _composable(args: List[str]) -> List[str]:
    """The overrides one composition takes: a sweep's (-m a,b) left out. As written when Hydra cannot
    parse them (`model` with no =value), so that composing them says why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = _override_words(args)
    try:
        parsed = OverridesParser.create().parse_overrides(words)
    except Exception:
        return words
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def _given(args: List[str]) -> dict:
    """The plain KEY=VALUE arguments as {key: value}, before Hydra has run."""
    return {o.key_or_group: o.value() for o in _overrides(args) if not o.is_sweep_override() and not o.is_delete()}


def _quiet_rank(args: List[str]) -> List[str]:
    """Under torchrun, processes other than rank 0 write nothing: Hydra gets a throwaway folder."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix=f"mnist-cli-rank{os.environ['RANK']}-")
    return [*args, f"hydra.run.dir='{scratch}'", "hydra.output_subdir=null", "hydra/job_logging=none"]


def _check_outputs_dir(args: List[str]) -> None:
    """Fail early, in one sentence, when run folders cannot be created (Hydra would show a traceback)."""
    if any(a.startswith("--") for a in args):  # --help, --cfg, ...: nothing will be written
        return
    folder = Path(str(_given(args).get("outputs_dir", "outputs")))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"outputs_dir={folder} cannot be created ({error.strerror}); choose another folder.") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"outputs_dir={folder} is not writable; choose another folder.")


def _refuse_before_hydra(args: List[str]) -> None:
    """Mistakes Hydra would answer with a traceback, or by overwriting a run: one sentence instead."""
    if "--shell-completion" in args or "-sc" in args:
        raise UserError(
            "shell completion is not supported; `mnist --help` lists the commands, `mnist <command> --help` every key."
        )
    multirun = _multirun(args)
    overrides = _overrides(args)
    keys = {o.key_or_group for o in overrides}
    searched = "hparams_search" in keys or "hydra/sweeper" in keys
    for o in overrides:
        if o.value_type is not None and o.value_type.name in ("INTERVAL_SWEEP", "RANGE_SWEEP") and not searched:
            if o.value_type.name == "INTERVAL_SWEEP" or not multirun:
                raise UserError(
                    f"{o.key_or_group}=interval(...) needs a search sweeper: add hparams_search=optuna, "
                    "or list the values to try (-m key=a,b,c)."
                )
    if multirun:  # -m experiment=mnist_best model=mlp,cnn: each swept option with the rest, before the sweep's folder
        from mnist_cli.config.hydra_refusals import composition_problem

        rest = _composable(args)
        for choice in _group_choices(overrides):
            problem = composition_problem("train", [*rest, choice])
            if problem:
                raise UserError(problem)


def _claim_named_folder(args: List[str]) -> List[str]:
    """With hydra.run.dir= (hydra.sweep.dir= for -m) the user names the folder: resolve it as Hydra
    will (${outputs_dir}, ${now:...}), create and lock it, and refuse it unless it is empty, all
    before Hydra writes .hydra/ into it. Returns the arguments with the resolved folder."""
    multirun = _multirun(args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if key not in {o.key_or_group for o in _overrides(args)} or _given(args).get("resume") not in (None, "null"):
        return args
    from omegaconf import OmegaConf

    from mnist_cli.config.compose import compose, quoted_value

    try:
        folder = Path(str(OmegaConf.select(compose("train", _composable(args), with_hydra=True), key)))
    except Exception:  # Hydra will say what is wrong with the command line
        return args
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{key}={folder} cannot be created ({error.strerror}); choose another folder.") from None
    from mnist_cli.runs import folder as runs

    if int(os.environ.get("RANK", "0")) == 0:
        runs.lock_run(folder)  # a second process naming the same folder is refused here, before it writes
        if any(p.name != runs.LOCK_FILE for p in folder.iterdir()):
            hint = "" if multirun else f", or continue it with resume={folder}"
            raise UserError(f"{key}={folder} is not empty; choose a new folder{hint}.")
    return [*args, f"{key}={quoted_value(folder.resolve())}"]


def _resume_in_place(args: List[str]) -> List[str]:
    """With resume=<run>, lock that run's folder and make Hydra use it, leaving its .hydra/ as it was."""
    values = _given(args)
    resume = values.get("resume")
    if resume in (None, "null"):
        return args
    from mnist_cli.config.compose import quoted_value
    from mnist_cli.runs import folder as runs
    from mnist_cli.runs.resume import run_folder

    if _multirun(args):
        raise UserError("resume= continues one run; it cannot be part of a sweep (-m).")
    folder = run_folder(str(resume), str(values.get("outputs_dir", "outputs")))
    if int(os.environ.get("RANK", "0")) == 0:
        runs.lock_run(folder)  # before Hydra opens anything in it: a second process writes nothing
    return [*args, f"hydra.run.dir={quoted_value(folder)}", "hydra.output_subdir=null"]


PATH_KEYS = ("outputs_dir", "data.root", "resume", "run", "output")


def _absolute_paths(cfg, cwd: str) -> None:
    """With hydra.job.chdir=true the job runs inside its run folder: relative paths the user gave
    (outputs_dir, data.root, inputs, ...) still mean what they meant where the command was typed."""
    from omegaconf import OmegaConf, open_dict

    def absolute(value):
        return (
            value if value in (None, "latest") or os.path.isabs(os.path.expanduser(value)) else os.path.join(cwd, value)
        )

    with open_dict(cfg):
        for key in PATH_KEYS:
            if OmegaConf.select(cfg, key, default=None) is not None:
                OmegaConf.update(cfg, key, absolute(str(OmegaConf.select(cfg, key))), merge=False)
        if "inputs" in cfg:
            cfg.inputs = [absolute(str(item)) for item in cfg.inputs]


def _print_help(command: str, overrides: List[str]) -> int:
    """Print conf/<command>.yaml's help template with the composed config (the overrides applied).

    Hydra's own --help builds a list of all of its plugins' config groups first, which takes
    over a second with the sweeper/launcher plugins installed; our template never shows it.
    """
    import string

    from omegaconf import OmegaConf, open_dict

    from mnist_cli.config.compose import compose

    try:
        cfg = compose(command, overrides, with_hydra=True)
    except Exception as error:  # a bad override: the same one-line answer as without --help
        print(f"mnist {command}: {_refused(command, overrides) or str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    print(string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(cfg)))
    return 0


def _discard_unless_resumed(command: str, cfg, runtime) -> None:
    """Remove the folder of a train or predict run that failed to start (never an existing run)."""
    from mnist_cli.runs import folder as runs

    if command == "predict" or (command == "train" and cfg.get("resume") is None):
        runs.discard_unstarted(runtime.runtime.output_dir)


def run_hydra_app(command: str, args: List[str]) -> int:
    """Run conf/<command>.yaml's Hydra app with `args`; config errors exit 2, like other usage errors."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_cli.config.checks import check_config
    from mnist_cli.config.schema import register_configs
    from mnist_cli.errors import RunFailed
    from mnist_cli.paths import absolute_path
    from mnist_cli.training.interrupt import Interrupted, ctrl_c_held

    register_configs()
    if "--help" in args or "-h" in args:
        return _print_help(command, [a for a in args if a not in ("--help", "-h", "-m", "--multirun")])
    task_started = False
    exit_code = 0

    def task(cfg):
        nonlocal task_started, exit_code
        task_started = True
        _release_stderr()
        runtime = HydraConfig.get()
        try:
            if runtime.job.chdir:
                _absolute_paths(cfg, runtime.runtime.cwd)
            if cfg.get("data", {}).get("root"):  # a run stores it: eval/predict from another folder read the same data
                cfg.data.root = absolute_path(cfg.data.root, runtime.runtime.cwd)
            check_config(cfg, command, list(runtime.overrides.task))  # before any work, and before torch is imported
            with ctrl_c_held():
                importlib.import_module("torch")
            result, exit_code = RUNNERS[command](cfg, runtime)
            return result
        except Interrupted as stopped:
            print(f"mnist {command}: {stopped}", file=sys.stderr)
            sys.exit(128 + stopped.signum)
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves and exits by itself)
            print(f"mnist {command}: interrupted by Ctrl-C.", file=sys.stderr)
            _discard_unless_resumed(command, cfg, runtime)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(_closed_pipe())
        except (UserError, RunFailed) as error:
            from mnist_cli.runs import folder as runs

            print(f"mnist {command}: {error}", file=sys.stderr)
            if runtime.mode == RunMode.MULTIRUN:  # one failed job must not stop the sweep
                runs.record_failure(runtime.runtime.output_dir, str(error), list(runtime.overrides.task))
                return float("nan")
            if isinstance(error, RunFailed):
                sys.exit(1)
            _discard_unless_resumed(command, cfg, runtime)
            sys.exit(2)
        except Exception as error:  # a bug: its traceback follows; the run folder says the run failed
            if command == "train":
                from mnist_cli.runs import folder as runs

                runs.record_failure(
                    runtime.runtime.output_dir,
                    f"{type(error).__name__}: {first_line(error)}",
                    list(runtime.overrides.task),
                )
            raise
        finally:
            from mnist_cli.runs import folder as runs

            runs.unlock_run(runtime.runtime.output_dir)

    if command == "train":
        _refuse_before_hydra(args)
        args = _claim_named_folder(_resume_in_place(args))
    if command in ("train", "predict"):
        _check_outputs_dir(args)
    if command == "train" and int(os.environ.get("RANK", "0")) > 0:
        args = _quiet_rank(args)
    app = hydra.main(config_path="pkg://mnist_cli.conf", config_name=command, version_base="1.3")(task)
    saved_argv = sys.argv
    sys.argv = [f"mnist {command}", *args]
    _hold_stderr()
    try:
        app()
    except Exception as error:  # Hydra's own usage errors, raised before our task runs
        if task_started:
            raise
        _release_stderr(keep=False)
        print(f"mnist {command}: {_refused(command, args) or str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if code == 1 and not task_started:  # Hydra rejected the command line or the config
            sentence = _refused(command, args)
            if sentence is not None:
                _release_stderr(keep=False)
                print(f"mnist {command}: {sentence}", file=sys.stderr)
            return 2
        return code
    finally:
        sys.argv = saved_argv
        _release_stderr()
    return exit_code


# Hydra prints its refusal of a command line over several lines: what it writes to stderr is held
# until our task starts, and a refusal is answered with one sentence instead (_refused).
_held_stderr: list = []  # [the real stderr, what was written meanwhile] while held


def _hold_stderr() -> None:
    _held_stderr[:] = [sys.stderr, io.StringIO()]
    sys.stderr = _held_stderr[1]


def _release_stderr(keep: bool = True) -> None:
    """Give stderr back, writing what was held to it unless keep=False (a no-op when nothing is held:
    in a launcher's worker process, or once released)."""
    if _held_stderr:
        real, held = _held_stderr
        _held_stderr.clear()
        sys.stderr = real
        if keep:
            real.write(held.getvalue())


def _refused(command: str, args: List[str]) -> Optional[str]:
    """Why Hydra refuses the KEY=VALUE arguments, in one sentence; None if they compose (Hydra's
    own words are shown then)."""
    from mnist_cli.config.hydra_refusals import composition_problem

    try:
        return composition_problem(command, _composable(args))
    except Exception:
        return None


def _group_choices(overrides: list) -> List[str]:
    """A sweep's options of config groups, one override each: `-m model=mlp,cnn` (or choice(mlp,cnn)) -> model=mlp, model=cnn."""
    from hydra.core.override_parser.types import ValueType

    from mnist_cli.config.schema import CHOSEN_GROUPS

    listed = (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP)
    return [
        f"{o.key_or_group}={value}"
        for o in overrides
        if o.value_type in listed and o.key_or_group in CHOSEN_GROUPS
        for value in o.sweep_string_iterator()
    ]
