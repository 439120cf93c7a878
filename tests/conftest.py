"""Fixtures shared by the test suite, and its markers.

The reference problems themselves (models, data sets, the true Lotka-Volterra parameters,
the decay model file) are public in :mod:`dynlearn.testing`: benchmarks and examples use
them too. What lives here is what needs setting up and tearing down.

Markers (declared in setup.cfg, ``[tool:pytest]``):

* ``slow``: example scripts run in subprocesses and other long tests.
* ``dask``: tests that start a Dask cluster. Every test using the ``client`` or
  ``own_client`` fixture is marked here automatically; a test that starts a cluster in
  another way (the command line's ``--workers``) carries the marker itself.

The README's test command (``python -m pytest -q``) runs neither (setup.cfg's addopts);
``python -m pytest -q -m "slow or dask"`` runs them, as CI does after the default run.

Nothing here or in the tests may depend on timing or on the order in which Dask runs work:
there are no timeouts on starting workers, and tests that kill workers do it on a cluster
of their own, so the shared one never needs to recover.
"""

from __future__ import annotations

import os

import pytest

from dynlearn.testing import write_decay_files

try:  # hypothesis is in the test extra
    import hypothesis
except ImportError:  # pragma: no cover - the tests that need it import it themselves
    hypothesis = None
else:
    # A loaded machine can make one example take seconds: no per-example deadline. In CI
    # the examples are derandomized (the same ones every run), so a red run is reproducible.
    hypothesis.settings.register_profile("dynlearn", deadline=None)
    hypothesis.settings.register_profile("dynlearn-ci", deadline=None, derandomize=True)
    hypothesis.settings.load_profile("dynlearn-ci" if os.environ.get("CI") else "dynlearn")

DASK_FIXTURES = frozenset({"client", "own_client"})


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a Dask cluster fixture with ``dask``."""
    for item in items:
        if DASK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dask)


def _local_client():
    pytest.importorskip("distributed")
    from dynlearn.distributed import local_client
    # LocalCluster returns once both workers are up, however long that takes: no timeout
    return local_client(2)


@pytest.fixture(scope="session")
def client():
    """A client of a 2-worker local Dask cluster (127.0.0.1 only), shared by every test of
    the session. Tests must leave it as they found it (both workers alive): a test that
    kills workers uses ``own_client``."""
    cl = _local_client()
    yield cl
    cl.close(timeout=None)      # waits for the workers to stop, however long that takes


@pytest.fixture
def own_client():
    """A client of a fresh 2-worker local Dask cluster for one test, closed after it: for
    tests that kill workers (no later test waits for a nanny to restart one)."""
    cl = _local_client()
    yield cl
    cl.close(timeout=None)


@pytest.fixture
def decay(tmp_path):
    """``(model file, data file)`` of the decay ``x' = -k x`` in ``tmp_path``
    (:func:`dynlearn.testing.write_decay_files`)."""
    return write_decay_files(tmp_path)
