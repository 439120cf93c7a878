"""Shared helpers of the example scripts: locating datasets and the --quick switch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "datasets"


def quick() -> bool:
    """True with ``--quick`` on the command line or ``DYNLEARN_QUICK=1``: a tiny budget,
    for the test suite (checks that the example runs, not that it converges)."""
    return "--quick" in sys.argv[1:] or os.environ.get("DYNLEARN_QUICK", "") not in ("", "0")
