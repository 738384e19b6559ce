"""Standard output and error as every command uses them: any text can be written, and a write that fails
is recorded, not a traceback from wherever the print happened to be: the command finishes its work and
main() says that its output was lost.

Imports nothing heavy: the CLI guards its streams before `mnist --help` prints.
"""

from __future__ import annotations

import codecs
import os
import sys

EX_IOERR = 74  # sysexits.h: the exit code when our own output could not be written (never 1, eval's failed gate)

# What our messages and tables use beyond ASCII, spelled in ASCII for a terminal or pipe that cannot take them
# (PYTHONIOENCODING=ascii, LC_ALL=C with PYTHONUTF8=0).
_ASCII = {"±": "+/-", "·": ".", "…": "...", "—": "-", "–": "-", "×": "x", "≥": ">=", "≤": "<=", "→": "->", "✓": "v"}


def _spell_in_ascii(error: UnicodeError):
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = "".join(_ASCII.get(ch, "?") for ch in error.object[error.start : error.end])
    return text, error.end


codecs.register_error("mnist_ascii", _spell_in_ascii)


class _Guarded:
    """A text stream that records its first failed write (`> /dev/full`, a full disk behind `> file`) and drops
    what follows, so the command's work goes on and ends as it would; main() then says so and exits 74.
    A closed pipe (`| head`) stays BrokenPipeError: that reader chose to stop."""

    def __init__(self, stream):
        self.stream = stream
        self.lost = None  # why the first write failed

    def _guarded(self, action, *args):
        if self.lost is not None:
            return None
        try:
            return action(*args)
        except BrokenPipeError:
            raise
        except OSError as error:
            self.lost = error.strerror or str(error)
            return None

    def write(self, text: str) -> int:
        self._guarded(self.stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: rich and print ask for these
        return getattr(self.stream, name)


def guard() -> None:
    """Make sys.stdout and sys.stderr record a failed write instead of raising it, and both spell in ASCII
    what their encoding cannot take. Safe to call twice."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "")
        if encoding not in ("utf8", "utf16", "utf32") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="mnist_ascii")
    if sys.stdout is None:  # started with stdout closed (`>&-`): what it shows is lost, as on a full disk
        sys.stdout = _Guarded(open(os.devnull, "w"))
        sys.stdout.lost = "standard output is closed"
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    for name in ("stdout", "stderr"):  # stderr's failures are dropped too: a sentence nobody reads changes no code
        if not isinstance(getattr(sys, name), _Guarded):
            setattr(sys, name, _Guarded(getattr(sys, name)))


def lost_output():
    """Why standard output could not be written (flushing it first), or None when all of it was."""
    if not isinstance(sys.stdout, _Guarded):
        return None
    sys.stdout.flush()
    return sys.stdout.lost


def say_output_lost(why: str) -> None:
    """Standard output could not be written (a full disk, /dev/full): say so on stderr; returns nothing.
    The caller exits 74 (EX_IOERR) where it would have exited 0, never 1, the failed-gate code of `mnist eval`."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere at exit
    print(f"mnist: the command's work is done, but its output could not be written ({why}).", file=sys.stderr)


def closed_pipe() -> int:
    """Output piped into `head` and the like, whose reader went away: stop quietly, as `cat` does.
    Returns 141 (128 + SIGPIPE), never 1, the failed-gate code of `mnist eval`."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
