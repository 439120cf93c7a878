"""Writing files safely: the one atomic-write helper, JSON encoding and ``.json``/``.npz`` pairs.

Every file dynlearn writes (tables, reports, figures, fit results, checkpoints) goes through
:func:`atomic_write`: the content is written to a temporary file in the target's folder
(a hidden name, ``.<name>.<random>.tmp``) and renamed over the target, so a reader (or a
fit resumed after a crash) never sees a half-written file, and a failed write leaves the
old file in place and no temporary file behind.

Fit results and checkpoints are pairs ``<path>.json`` (readable metadata) + ``<path>.npz``
(arrays, no pickles): :func:`json_npz_paths` names them, :func:`write_json_npz` writes
them (arrays first, the JSON last, so whoever finds the JSON finds the arrays it describes)
and :func:`read_json_npz` reads them back.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "json_npz_paths", "jsonable", "read_head", "read_json", "read_json_npz",
           "safe_file_name", "write_bytes_atomic", "write_json_npz", "write_text_atomic"]


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[IO[bytes], str]]:
    """A new hidden temporary file in ``path``'s folder, open for binary writing; removed
    again if the block raises (a no-op once it has been renamed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh, tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _publish(tmp: str, path) -> None:
    """Rename the finished temporary file ``tmp`` over ``path``."""
    # mkstemp creates the file 0600; give it the mode open() would have given
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write(path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file atomically: ``write(fh)`` fills a temporary file, which then replaces
    ``path``.

    Parameters
    ----------
    path : str or path
        The target; its folder must exist.
    write : callable
        Called with a binary file object open for writing (e.g. ``fig.savefig(fh, ...)``,
        ``np.savez(fh, ...)``, ``fh.write(data)``).

    Notes
    -----
    On failure (``write`` raises, the rename fails) the old ``path`` is left unchanged and
    the temporary file is removed.
    """
    path = Path(path)
    with _temporary_beside(path) as (fh, tmp):
        write(fh)
        fh.close()
        _publish(tmp, path)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename,
    so a reader never sees a half-written file (see :func:`atomic_write`)."""
    write_bytes_atomic(path, text.encode(encoding))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars turned into plain Python values for
    :mod:`json`: arrays become lists, dict keys strings, tuples lists, and non-finite floats
    the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def json_npz_paths(path) -> tuple[str, str]:
    """The two files of a result or checkpoint: ``(<path>.json, <path>.npz)``.

    ``path`` may be given with or without either suffix. A folder (one that exists, or a
    path ending in a separator) means ``result.json`` and ``result.npz`` inside it, never
    the hidden ``<folder>/.json``.
    """
    base = os.fspath(path)
    if base.endswith(("/", os.sep)) or os.path.isdir(base):
        base = os.path.join(base, "result")
    for ext in (".json", ".npz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base + ".json", base + ".npz"


def write_json_npz(path, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """Write ``meta`` to ``<path>.json`` and ``arrays`` to ``<path>.npz``, atomically.

    Both are written to temporary files first; then the arrays replace ``<path>.npz`` and
    the JSON ``<path>.json``, in that order, so whoever finds the new JSON finds the arrays
    it describes. If anything fails, neither file is replaced (unless the very last rename
    fails) and no temporary file is left. The folder is created when missing.

    Parameters
    ----------
    path : str or path
        With or without the ``.json``/``.npz`` suffix.
    meta : mapping
        Encoded with :func:`jsonable`, indented by one space.
    arrays : mapping of str to ndarray
        Saved with :func:`numpy.savez` (no pickled objects).

    Returns
    -------
    tuple of str
        The paths of the JSON and npz files.
    """
    jpath, npath = json_npz_paths(path)
    os.makedirs(os.path.dirname(os.path.abspath(jpath)), exist_ok=True)
    text = json.dumps(jsonable(meta), indent=1).encode("utf-8")
    with _temporary_beside(Path(npath)) as (nfh, ntmp):
        np.savez(nfh, **arrays)
        nfh.close()
        with _temporary_beside(Path(jpath)) as (jfh, jtmp):
            jfh.write(text)
            jfh.close()
            _publish(ntmp, npath)
            _publish(jtmp, jpath)
    return jpath, npath


def read_json(path) -> Any:
    """The JSON half of a pair written by :func:`write_json_npz` (``path`` with or without
    suffix), without reading the arrays.

    Raises
    ------
    FileNotFoundError
        The JSON file is missing.
    ValueError
        It is not valid JSON (or not UTF-8).
    """
    jpath, _ = json_npz_paths(path)
    with open(jpath, encoding="utf-8") as f:
        return json.load(f)


def read_json_npz(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a pair written by :func:`write_json_npz`: ``(meta, arrays)``.

    Arrays are read without unpickling (``allow_pickle=False``).

    Raises
    ------
    FileNotFoundError
        Either file is missing.
    """
    jpath, npath = json_npz_paths(path)
    with open(jpath, encoding="utf-8") as f:
        meta = json.load(f)
    with np.load(npath, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def read_head(path, size: int) -> str | None:
    """The first ``size`` characters of a text file (UTF-8, undecodable bytes replaced), for
    guessing what a file is; ``None`` when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(size)
    except OSError:
        return None


def safe_file_name(name: str, default: str = "model") -> str:
    """``name`` made safe as one component of a path: letters, digits, ``.``, ``-`` and
    ``_`` are kept (after Unicode NFKC normalisation), every run of other characters
    (path separators, spaces, control characters) becomes ``_``, leading and trailing dots
    and underscores are dropped (no ``..``, no hidden file), and the result is at most 100
    characters; ``default`` when nothing is left.

    A model's name chooses the default output folder of ``dynlearn fit``; a name such as
    ``"../../escaped"`` must not choose a folder outside the working directory.

    Examples
    --------
    >>> safe_file_name("../../escaped")
    'escaped'
    >>> safe_file_name("lynx hare/v2")
    'lynx_hare_v2'
    """
    text = unicodedata.normalize("NFKC", str(name))
    text = re.sub(r"[^\w.-]+", "_", text, flags=re.UNICODE)
    text = text.strip("._")[:100].strip("._")
    return text or default
