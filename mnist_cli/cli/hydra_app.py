"""Running conf/<command>.yaml's Hydra app on a parsed command line: what Hydra writes to stderr is held until
our task starts, Hydra's refusal of the command line is answered with one sentence, and the task's errors
become exit codes (config and usage errors 2, like other usage errors).

`@hydra.main` parses sys.argv itself, so each subcommand gets its own primary config and keeps -m, --cfg and
hydra.* overrides.
"""

from __future__ import annotations

import importlib
import io
import sys
from dataclasses import dataclass, field
from typing import Optional

from mnist_cli import streams
from mnist_cli.cli import run_claim
from mnist_cli.cli.command_line import CommandLine, refuse_before_hydra
from mnist_cli.errors import RunFailed, UserError, first_line


class HeldStderr:
    """sys.stderr swapped for a buffer while Hydra parses and composes: Hydra prints its refusal of a command
    line over several lines, and we answer it with one sentence instead."""

    def __init__(self) -> None:
        self.real = None  # the real stderr while held
        self.buffer: Optional[io.StringIO] = None

    def hold(self) -> None:
        self.real, self.buffer = sys.stderr, io.StringIO()
        sys.stderr = self.buffer

    def release(self, keep: bool = True) -> None:
        """Give stderr back, writing what was held to it unless keep=False (a no-op when nothing is held:
        in a launcher's worker process, or once released)."""
        if self.real is None:
            return
        real, held = self.real, self.buffer
        self.real = self.buffer = None
        sys.stderr = real
        if keep:
            real.write(held.getvalue())

    def __reduce__(self):  # a launcher pickles the task into its worker processes: nothing is held there
        return HeldStderr, ()


@dataclass
class AppRun:
    """One run of a subcommand's Hydra app: its command line, and what its task reports back."""

    line: CommandLine
    stderr: HeldStderr = field(default_factory=HeldStderr)
    started: bool = False  # our task began: an error from here on is ours, not Hydra's refusal
    exit_code: int = 0


def run_hydra_app(line: CommandLine) -> int:
    """Run conf/<command>.yaml's Hydra app on the command line; returns the exit code."""
    from mnist_cli.config.schema import register_configs

    register_configs()
    if line.asks_help:
        return _print_help(line)
    if line.command == "train":
        refuse_before_hydra(line)
    return _run_app(AppRun(run_claim.claimed(line)))


def _run_app(run: AppRun) -> int:
    import hydra

    def task(cfg):  # @hydra.main calls its task with the config alone
        return run_task(cfg, run)

    app = hydra.main(config_path="pkg://mnist_cli.conf", config_name=run.line.command, version_base="1.3")(task)
    saved_argv, sys.argv = sys.argv, run.line.hydra_argv  # @hydra.main reads its command line from sys.argv only
    run.stderr.hold()
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C after Hydra made the job's folder, before our task's own handler took over
        _discard_unstarted_job(run)
        raise  # main says it in one sentence
    except Exception as error:  # Hydra's own usage errors, raised before our task runs
        if run.started:
            raise
        return _say_refused(run, _refused(run.line) or str(error).strip().splitlines()[0])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if code == 1 and not run.started:  # Hydra rejected the command line or the config
            sentence = _refused(run.line)
            return 2 if sentence is None else _say_refused(run, sentence)  # None: Hydra's own words are shown
        return code
    finally:
        sys.argv = saved_argv
        run.stderr.release()
    return run.exit_code


def _discard_unstarted_job(run: AppRun) -> None:
    """Remove the folder Hydra made for a train or predict job that never started (see discard_unless_resumed)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if HydraConfig.initialized() and OmegaConf.select(HydraConfig.get(), "runtime.output_dir"):
        run_claim.discard_unless_resumed(run.line.command, run.line.given, HydraConfig.get())


def _say_refused(run: AppRun, sentence: str) -> int:
    """Print the one sentence in place of Hydra's held words; returns 2."""
    run.stderr.release(keep=False)
    print(f"mnist {run.line.command}: {sentence}", file=sys.stderr)
    return 2


def _refused(line: CommandLine) -> Optional[str]:
    """Why Hydra refuses the command line's overrides, in one sentence; None if they compose (Hydra's own words
    are shown then)."""
    from mnist_cli.config.hydra_refusals import composition_problem

    try:
        return composition_problem(line.command, line.composable)
    except Exception:
        return None


def run_task(cfg, run: AppRun):
    """Hydra's task: settle and check the config, then run the subcommand. Returns the value a sweeper optimises
    (nan for a sweep's failed job); other outcomes end the process with their exit code."""
    from hydra.core.hydra_config import HydraConfig

    from mnist_cli.cli.commands import RUNNERS
    from mnist_cli.cli.settle import settle
    from mnist_cli.config.checks import check_config
    from mnist_cli.runs.locks import unlock_run
    from mnist_cli.runs.state import record_failure
    from mnist_cli.training.interrupt import Interrupted, Terminated, ctrl_c_held, sigterm_stops

    run.started = True
    run.stderr.release()
    runtime, command = HydraConfig.get(), run.line.command
    try:
        settle(cfg, runtime, command)
        check_config(cfg, command, list(runtime.overrides.task))  # before any work, and before torch is imported
        with ctrl_c_held():
            importlib.import_module("torch")
        with sigterm_stops():
            result, run.exit_code = RUNNERS[command](cfg, runtime)
        return result
    except Interrupted as stopped:
        print(f"mnist {command}: {stopped}", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM outside the training loop (which saves and exits by itself)
        terminated = isinstance(stop, Terminated)
        print(f"mnist {command}: interrupted by {'SIGTERM' if terminated else 'Ctrl-C'}.", file=sys.stderr)
        run_claim.discard_unless_resumed(command, cfg, runtime)
        sys.exit(143 if terminated else 130)
    except BrokenPipeError:
        sys.exit(streams.closed_pipe())
    except (UserError, RunFailed) as error:
        return _job_failed(error, command, cfg, runtime)
    except Exception as error:  # a bug: its traceback follows; the run folder says the run failed
        if command == "train":
            why = f"{type(error).__name__}: {first_line(error)}"
            record_failure(runtime.runtime.output_dir, why, list(runtime.overrides.task))
        raise
    finally:
        unlock_run(runtime.runtime.output_dir)


def _job_failed(error: Exception, command: str, cfg, runtime) -> float:
    """A mistake of the user's (UserError) or a failed run (RunFailed), said in one sentence. Returns nan for a
    sweep's job (one failed job must not stop the sweep); else ends the process: 1 for RunFailed, 2 otherwise."""
    from hydra.types import RunMode

    from mnist_cli.runs.state import record_failure

    print(f"mnist {command}: {error}", file=sys.stderr)
    if runtime.mode == RunMode.MULTIRUN:
        record_failure(runtime.runtime.output_dir, str(error), list(runtime.overrides.task))
        return float("nan")
    if isinstance(error, RunFailed):
        sys.exit(1)
    run_claim.discard_unless_resumed(command, cfg, runtime)
    sys.exit(2)


def _print_help(line: CommandLine) -> int:
    """Print conf/<command>.yaml's help template with the composed config (the overrides applied); returns the
    exit code. Hydra's own --help builds a list of all of its plugins' config groups first, which takes over a
    second with the sweeper/launcher plugins installed; our template never shows it."""
    import string

    from omegaconf import OmegaConf, open_dict

    from mnist_cli.config.compose import compose

    try:
        cfg = compose(line.command, line.words, with_hydra=True)
    except Exception as error:  # a bad override: the same one-line answer as without --help
        print(f"mnist {line.command}: {_refused(line) or str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    print(string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(cfg)))
    return 0
