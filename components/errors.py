"""User-facing errors: bad config or bad data, reported as one line with exit code 2."""


class InputError(Exception):
    """A problem with the user's input (config key, value, data file, model name).

    The message names the file, field or key at fault; entry points print it as one line
    (no traceback) and exit with code 2, before any expensive work starts.
    """
