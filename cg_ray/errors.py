"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a missing path, a wrong config value, an inconsistent label.

    The message names what is wrong and, where it can, what to do about it.
    """
