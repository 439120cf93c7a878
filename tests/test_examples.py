"""Every example script runs end to end with a tiny budget (``--quick``).

Each runs in a fresh Python process (a few seconds each): marked ``slow``, so out of the
default run and in CI's second one."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dynlearn as dl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["lynx_hare.py", "influenza_sir.py", "lv_ude.py", "spiral_node.py",
           "cascaded_tanks.py", "lv_ude_recovery.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_quick(script):
    env = dict(os.environ, DYNLEARN_QUICK="1", PYTHONWARNINGS="ignore", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick"], cwd=EXAMPLES,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Fit of" in proc.stdout


def used_dynlearn_names(path: Path) -> set[tuple[str, str]]:
    """``(module, name)`` for every ``dl.name`` and ``from dynlearn... import name`` in a
    script (``import dynlearn as dl`` assumed, as in every example)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "dl"):
            out.add(("dynlearn", node.attr))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dynlearn":
            out.update((node.module, alias.name) for alias in node.names)
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_examples_use_only_existing_names(script):
    """The quick check of the default run (the scripts themselves run in the slow one):
    every dynlearn name an example uses exists, so a renamed API shows up at once."""
    names = used_dynlearn_names(EXAMPLES / script)
    assert names, f"{script} uses no dynlearn name: is the parsing still right?"
    missing = [f"{m}.{n}" for m, n in sorted(names)
               if not hasattr(dl if m == "dynlearn" else importlib.import_module(m), n)]
    assert not missing, f"{script} uses names dynlearn does not have: {missing}"


def test_datasets_are_bundled_with_licenses():
    root = EXAMPLES.parent / "datasets"
    for f in ("hudson_bay_lynx_hare.csv", "boarding_school_influenza_1978.csv", "README.md",
              "cascaded_tanks/cascaded_tanks_estimation.csv",
              "cascaded_tanks/cascaded_tanks_test.csv", "cascaded_tanks/LICENSE",
              "cascaded_tanks/README.md"):
        assert (root / f).exists(), f
    assert "CC BY-SA 4.0" in (root / "cascaded_tanks" / "LICENSE").read_text()
