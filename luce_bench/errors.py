"""Errors meant for the user: printed as one line by the CLI, without a traceback unless --debug."""


class UserError(Exception):
    """Bad input or an unmet precondition the user can fix; the message is one clear line."""
