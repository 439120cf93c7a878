"""Argument checks shared by the analyses."""

from __future__ import annotations

import numpy as np

from dynlearn.errors import OptionError

__all__ = ["check_count"]


def check_count(n, what: str) -> int:
    """``n`` as an int, if it is a positive integer (not a bool).

    Parameters
    ----------
    n : object
        The value given, e.g. the number of bootstrap replicates.
    what : str
        Its name, for the error message.

    Raises
    ------
    OptionError
        ``n`` is not a positive integer.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise OptionError(f"{what} must be a positive integer, got {n!r}")
    return int(n)
