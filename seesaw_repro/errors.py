"""The one kind of error a user can cause and fix; the CLI prints it as one line, exit 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""
