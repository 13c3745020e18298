"""Errors meant for the user: printed as one line by the CLI, without a traceback unless --debug."""


def one_line(text: object) -> str:
    r"""`text` as one printable line: line breaks become spaces, other control characters escapes like \x1e."""
    out = []
    for ch in " ".join(str(text).splitlines()):
        out.append(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def reason_of(exc: BaseException) -> str:
    """Why `exc` happened, in one line: an OSError's text without its file (the caller names that), else its message."""
    said = getattr(exc, "strerror", None) or str(exc)
    return said.splitlines()[0] if said else type(exc).__name__


class UserError(Exception):
    """Bad input or an unmet precondition the user can fix; the message is one clear line."""


class WriteError(UserError):
    """A file luce-bench must write could not be written (a full disk, no permission): exit code 4, not 2."""

    exit_code = 4


class ConsoleClosed(BrokenPipeError):
    """Standard output's reader is gone (`luce-bench sweep | head`).

    A run stops on it (exit 4), other commands end quietly; never a backend's failure, though the console is written
    from inside a test.
    """
