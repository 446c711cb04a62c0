"""The one exception type that the CLI turns into a one-line message and exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: enough to say why, short enough for one error line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so a run is closed as KILLED.

    A BaseException, as KeyboardInterrupt is, so that `except Exception` cleanup code lets it through."""
