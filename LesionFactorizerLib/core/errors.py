"""Errors that the CLI turns into a one-line ``error:`` message and exit code 2.

Anything raised as :class:`UserError` is the user's to fix (bad input, wrong model, missing
file); its message must say what is wrong and what to do. Every other exception is a bug and
exits with code 1.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
