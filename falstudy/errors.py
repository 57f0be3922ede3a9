"""User-facing errors.

A ``FalstudyError`` is bad input: a wrong config field, a missing corpus, a bad SQL query.
The CLI prints its message on one line and exits with code 2; anything else is an internal
error (exit 1, traceback behind ``--debug``).
"""


class FalstudyError(Exception):
    """Bad input. The message says what is wrong and how to fix it, in one line."""
