"""The one exception type dean_hf raises for user errors."""


class DeanError(ValueError):
    """A user error: a bad option, file, model or data set.

    The message names the bad value, what was expected and how to fix it. Nothing was changed
    (no weight, no file) when it is raised.
    """
