"""The one exception type for bad input: the CLI prints its message and exits non-zero."""


class AlignError(Exception):
    """A problem with the user's model, data, config or checkpoint, stated in one line."""


class Interrupted(Exception):
    """Training stopped by the user (Ctrl-C) at the end of a batch: the CLI prints how to resume and exits 130."""
