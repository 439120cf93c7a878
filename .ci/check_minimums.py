"""Check that .ci/constraints-min.txt pins exactly the minimums that setup.cfg declares.

Run by .ci/run (in a virtual environment that has ``packaging``, which pytest brings):
``python .ci/check_minimums.py``. Exits 1 and names each mismatch.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# packages whose minimum the constraints file must pin (setup.cfg's install_requires and
# the test extra); an extra such as dask[distributed] also pins the package it brings
EXTRA_PACKAGES = {("dask", "distributed"): "distributed"}
NOT_PINNED = {"import-linter", "ruff"}   # tools CI runs; the tests do not import them


def declared_minimums() -> dict[str, Version]:
    """``{package: minimum}`` from setup.cfg's install_requires and test extra."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = (cfg["options"]["install_requires"] + "\n"
             + cfg["options.extras_require"]["test"]).splitlines()
    out: dict[str, Version] = {}
    for line in filter(None, (ln.strip() for ln in lines)):
        req = Requirement(line)
        if req.name in NOT_PINNED:
            continue
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if len(lows) != 1:
            sys.exit(f"setup.cfg: {line!r} has no single >= minimum")
        out[req.name] = lows[0]
        for extra in req.extras:
            if (req.name, extra) in EXTRA_PACKAGES:
                out[EXTRA_PACKAGES[req.name, extra]] = lows[0]
    return out


def pinned() -> dict[str, Version]:
    """``{package: version}`` from the ``name==version`` lines of the constraints file."""
    out = {}
    for line in (ROOT / ".ci" / "constraints-min.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9.]*)", line)
            if not m:
                sys.exit(f".ci/constraints-min.txt: {line!r} is not name==version")
            out[m.group(1).lower()] = Version(m.group(2))
    return out


def main() -> int:
    want, have = declared_minimums(), pinned()
    errors = [f"{name}: setup.cfg asks >={v}, constraints-min.txt pins {have.get(name)}"
              for name, v in sorted(want.items()) if have.get(name) != v]
    errors += [f"{name}: pinned in constraints-min.txt but not a minimum in setup.cfg"
               for name in sorted(set(have) - set(want))]
    for e in errors:
        print(e)
    if not errors:
        print(f"constraints-min.txt pins the {len(want)} minimums of setup.cfg")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
