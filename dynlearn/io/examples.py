"""The example model files shipped with dynlearn, and writing them out.

Each example is a model file ``NAME.toml`` and its data ``NAME.csv`` (plus, where the data
has a license of its own, ``NAME.LICENSE.txt``), installed with the package in
``dynlearn/bundled/models/``, so that a user who installed with pip has working files:
``dynlearn example NAME`` writes them into a folder, and ``dynlearn fit NAME.toml NAME.csv``
fits them. The repository's ``examples/models/`` holds the same models (a test checks that
they agree).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from dynlearn.errors import OptionError

__all__ = ["EXAMPLES_DIR", "example_description", "example_files", "example_names",
           "write_example"]

#: Where the example model files are installed.
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "bundled" / "models"


def example_names() -> list[str]:
    """The names of the shipped examples, sorted (``lynx_hare``, ``sir_influenza``, ...)."""
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.toml"))


def _canonical(name: str) -> str:
    """``lynx-hare``, ``Lynx_Hare`` and ``lynx_hare.toml`` all name ``lynx_hare``."""
    name = str(name).strip()
    if name.lower().endswith(".toml"):
        name = name[:-5]
    return name.replace("-", "_").lower()


def example_files(name: str) -> list[Path]:
    """The installed files of example ``name``: the model file first, then its data and
    license files.

    Raises
    ------
    OptionError
        No example has that name (the message lists the names).
    """
    stem = _canonical(name)
    model = EXAMPLES_DIR / f"{stem}.toml"
    if not model.is_file():
        names = example_names()
        if not names:
            raise OptionError(f"the example model files are missing from the installation "
                              f"({EXAMPLES_DIR}); reinstall dynlearn")
        raise OptionError(f"no example named {name!r}; the examples are {names}")
    others = sorted((p for p in EXAMPLES_DIR.glob(f"{stem}.*")
                     if p != model and p.suffix in (".csv", ".txt")),
                    key=lambda p: (p.suffix != ".csv", p.name))
    return [model, *others]


def example_description(name: str) -> str:
    """The first sentence of the example's header comment (one line, for listings)."""
    model = example_files(name)[0]
    words = []
    for line in model.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or not line[1:].strip():
            break
        words.append(line[1:].strip())
    text = re.sub(r"\s*\([^)]*\)", "", " ".join(words))   # no parenthesised asides
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def write_example(name: str, out=".", force: bool = False) -> list[Path]:
    """Copy example ``name`` (its model file, data and license) into folder ``out``.

    Parameters
    ----------
    name : str
        One of :func:`example_names` (``-`` and ``_`` are the same, case is ignored).
    out : str or pathlib.Path
        The folder, made when missing.
    force : bool
        Replace files of the same names; without it an existing file is an error and
        nothing is written.

    Returns
    -------
    list of pathlib.Path
        The files written, the model file first.

    Raises
    ------
    OptionError
        An unknown name, ``out`` naming a file, or (without ``force``) a file that would be
        replaced.
    """
    files = example_files(name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out}: is a file, not a folder")
    targets = [out / f.name for f in files]
    clash = [str(t) for t in targets if t.exists()]
    if clash and not force:
        raise OptionError(f"{', '.join(clash)} already exist{'s' if len(clash) == 1 else ''}; "
                          "pass --force to replace, or --out DIR to write elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    for f, t in zip(files, targets):
        shutil.copyfile(f, t)
    return targets
