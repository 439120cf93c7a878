"""Every example script runs end to end with a tiny budget (``--quick``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["lynx_hare.py", "influenza_sir.py", "lv_ude.py", "spiral_node.py",
           "cascaded_tanks.py", "lv_ude_recovery.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_quick(script):
    env = dict(os.environ, DYNLEARN_QUICK="1", PYTHONWARNINGS="ignore", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick"], cwd=EXAMPLES,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Fit of" in proc.stdout


def test_datasets_are_bundled_with_licenses():
    root = EXAMPLES.parent / "datasets"
    for f in ("hudson_bay_lynx_hare.csv", "boarding_school_influenza_1978.csv", "README.md",
              "cascaded_tanks/cascaded_tanks_estimation.csv",
              "cascaded_tanks/cascaded_tanks_test.csv", "cascaded_tanks/LICENSE",
              "cascaded_tanks/README.md"):
        assert (root / f).exists(), f
    assert "CC BY-SA 4.0" in (root / "cascaded_tanks" / "LICENSE").read_text()
