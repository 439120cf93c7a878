"""Start-up (issue #13): ``import dynlearn`` imports its names on first use, and the heavy
optional libraries only where they are needed. Checked in fresh processes through
``sys.modules``, never by timing (benchmarks/import_time.py measures the time)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dynlearn as dl
from dynlearn.lazy import LazyModule, is_instance

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "dask", "distributed", "tqdm")


def imported_after(code: str) -> dict:
    """Which of :data:`HEAVY` (and which dynlearn modules) a fresh interpreter has imported
    after running ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
             "'dynlearn': sorted(m for m in sys.modules if m.startswith('dynlearn'))}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       env=env, check=True, timeout=300)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_dynlearn_imports_nothing_heavy():
    """``import dynlearn`` used to import pandas, the whole package and, through it, the
    Dask runtime module; now it imports the package's ``__init__`` alone."""
    seen = imported_after("import dynlearn")
    assert seen["heavy"] == []
    assert seen["dynlearn"] == ["dynlearn"]


def test_a_model_and_its_simulation_need_no_pandas():
    seen = imported_after(
        "import numpy as np, dynlearn as dl\n"
        "m = dl.HybridModel(['x'], {'x': '-k*x'}, params={'k': 0.5})\n"
        "sol = dl.simulate(m, np.linspace(0, 1, 5), [1.0])\n"
        "data = dl.Dataset([dl.Experiment('e', sol.t, {'x': sol.y[:, 0]})])\n"
        "assert sol.y.shape == (5, 1) and len(data) == 1")
    assert seen["heavy"] == []


def test_fit_and_recover_do_not_import_plotting_or_dask():
    """Fitting needs pandas (results are tables) but neither matplotlib nor Dask."""
    seen = imported_after("import dynlearn as dl\ndl.fit, dl.recover, dl.bootstrap, "
                          "dl.parallel, dl.FitResult")
    assert "matplotlib" not in seen["heavy"]
    assert "dask" not in seen["heavy"] and "distributed" not in seen["heavy"]


def test_every_public_name_is_reachable():
    """Lazy or not, ``dir``, attribute access, ``from dynlearn import X`` and ``import *``
    see every name of ``__all__``."""
    assert set(dl.__all__) <= set(dir(dl))
    for name in dl.__all__:
        assert getattr(dl, name) is not None, name
    ns: dict = {}
    exec("from dynlearn import *", ns)
    assert {n for n in ns if not n.startswith("__")} | {"__version__"} == set(dl.__all__)
    from dynlearn import HybridModel, fit
    from dynlearn.core.model import HybridModel as Direct
    from dynlearn.fitting.fitter import fit as direct_fit
    assert HybridModel is Direct and fit is direct_fit
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        dl.no_such_name  # noqa: B018


def test_data_warning_and_restarts_are_top_level():
    """The warning for unused data columns and the default network trainer are public."""
    from dynlearn import DataWarning, Restarts
    from dynlearn.errors import DataWarning as direct_warning
    from dynlearn.optimizers.restarts import Restarts as direct_restarts
    assert DataWarning is direct_warning and Restarts is direct_restarts
    assert {"DataWarning", "Restarts"} <= set(dir(dl)) & set(dl.__all__)


def test_lazy_module_and_is_instance():
    lazy = LazyModule("json")
    assert "not imported yet" in repr(lazy)
    assert lazy.dumps([1]) == "[1]" and "imported" in repr(lazy)
    assert is_instance(1.5, "builtins", "float")
    assert not is_instance("x", "builtins", "float")
    # a module nobody imported: nothing can be an instance of its classes, and it stays
    # unimported
    assert not is_instance(object(), "no_such_module_here", "Frame")
    assert "no_such_module_here" not in sys.modules
