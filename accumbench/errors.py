"""The exceptions the CLI turns into one error line: UserError (exit 2), StoreUnavailable (exit 1)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: enough to say why, short enough for one error line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


class StoreUnavailable(Exception):
    """The run database cannot be written: the disk is full, or its server stayed out of reach. Not the
    user's input (exit 1, not 2); the message names the database and what to do."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so a run is closed as KILLED.

    A BaseException, as KeyboardInterrupt is, so that `except Exception` cleanup code lets it through."""
