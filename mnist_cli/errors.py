"""The one exception type for mistakes a user can fix: the CLI prints its message and exits 2."""


class UserError(Exception):
    """Bad input (config value, path, data). Its message is one sentence that says what to do."""


class RunFailed(Exception):
    """A run that started but could not finish (e.g. the loss became NaN); exit 1, not 2."""
