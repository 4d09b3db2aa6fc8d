"""The one exception type for bad input: the CLI prints its message on one line and exits with status 2."""


class VharmError(Exception):
    """Bad input or usage. The message names the file (or option) and says what is wrong."""
