"""Tables as dynlearn writes them: CSV with 10 significant digits, written atomically."""

from __future__ import annotations

from dynlearn.files import write_text_atomic

__all__ = ["write_csv"]


def write_csv(frame, path, index: bool = False) -> None:
    """Write a DataFrame as CSV (``%.10g`` floats) through a temporary file and a rename.

    Parameters
    ----------
    frame : pandas.DataFrame
    path : str or path
        The target; its folder must exist.
    index : bool
        Write the index as the first column (e.g. parameter names).
    """
    write_text_atomic(path, frame.to_csv(index=index, float_format="%.10g"))
