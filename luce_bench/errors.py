"""Errors meant for the user: printed as one line by the CLI, without a traceback unless --debug."""


class UserError(Exception):
    """Bad input or an unmet precondition the user can fix; the message is one clear line."""


class WriteError(UserError):
    """A file luce-bench must write could not be written (a full disk, no permission): exit code 4, not 2."""

    exit_code = 4
