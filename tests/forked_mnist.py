"""Run `mnist` in a fresh process forked from a server that has already imported torch, torchvision and Hydra.

Importing those costs ~4 s of the ~5 s an `mnist train` on the synthetic data takes on 2 cores. Each
call here still gets its own process: its own exit code, stdout, stderr, working folder, environment,
Hydra state and mnist_cli modules (imported in the child, so module-level state starts fresh). What the
child runs is the console script's body, `sys.exit(mnist_cli.cli.main.main())`; signals and kill -9 reach it as
they reach the real command. Tests about the installed
script itself, a launcher, or a Ctrl-C during the imports start the real command instead (conftest.MNIST_COMMAND).
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Sequence

# Third-party only: mnist_cli creates its rich console at import, from the child's own stdout. pytest: the
# child re-imports the parent's __main__ (pytest), as multiprocessing does.
PRELOADED = [
    "torch",
    "torchvision",
    "hydra",
    "omegaconf",
    "rich",
    "numpy",
    "PIL.Image",
    "matplotlib.pyplot",
    "optuna",
    "pytest",
]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOADED)


def start_server(env: dict) -> None:
    """Start the fork server under env (OMP_NUM_THREADS is read when torch loads its OpenMP runtime)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


MNIST_ENTRY = "mnist_cli.cli.main:main"  # what the `mnist` console script calls
TORCHRUN_ENTRY = "torch.distributed.run:main"  # what the `torchrun` console script calls


def _child(entry: str, program: str, args: Sequence[str], cwd: str, env: dict, out: str, err: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as Python started from a terminal has it
    written = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # a FIFO given as stdout is opened as it is
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, written), (2, err, written)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [program, *args]
    try:
        module, function = entry.split(":")
        code = getattr(importlib.import_module(module), function)()
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    threading._shutdown()  # what the interpreter does at exit, in its order: threads (loky stops its workers), then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class ForkedCommand:
    """`program *args` running in a child of the server, with the parts of subprocess.Popen the tests use."""

    def __init__(
        self,
        program: str,
        args: Sequence[str],
        cwd: Path,
        env: dict,
        entry: str = MNIST_ENTRY,
        stdout: Path | None = None,
    ):
        """stdout: a path to write stdout to instead (a FIFO, to give it a reader that goes away)."""
        self.args = [program, *args]
        self._scratch = tempfile.TemporaryDirectory(prefix="forked-mnist-")
        self._out = stdout or Path(self._scratch.name, "stdout")
        self._err = Path(self._scratch.name, "stderr")
        self._process = _context.Process(
            target=_child, args=(entry, program, list(args), str(cwd), dict(env), str(self._out), str(self._err))
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, -N if a signal N ended it, None while it runs."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """(stdout, stderr) once it has ended; on a timeout it is killed and TimeoutExpired raised."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        try:
            return (self._out.read_text() if self._out.is_file() else ""), (
                self._err.read_text() if self._err.exists() else ""
            )
        finally:
            self._scratch.cleanup()


def run_forked(
    program: str, args: Sequence[str], cwd: Path, env: dict, timeout: float, entry: str = MNIST_ENTRY
) -> subprocess.CompletedProcess:
    """Run `program *args` as a child of the server and wait; the result reads like subprocess.run's."""
    child = ForkedCommand(program, args, cwd, env, entry)
    stdout, stderr = child.communicate(timeout)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
