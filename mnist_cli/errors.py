"""The exception types for what a user sees as one sentence: the CLI prints the message and exits."""


class UserError(Exception):
    """Bad input (config value, path, data). Its message is one sentence that says what to do; exit 2."""


class RunFailed(Exception):
    """A run that started but could not finish (e.g. the loss became NaN); exit 1, not 2."""


class WriteFailed(RunFailed):
    """A file could not be written (disk full, no permission); the previous version of it is kept."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): for one-line warnings."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
