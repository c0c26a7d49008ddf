"""The value checks that config keys share (a yaml or command-line value may be a bool where a number is
meant: ``True`` is an int to Python, never an epoch count or a learning rate here)."""

import math
from numbers import Real


def is_integer(value):
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """A finite real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
