"""The README's "One page of API" snippet runs as written and means what it says.

It simulates Lotka-Volterra data with the interaction terms, fits a hybrid model whose
network learns them, recovers them as equations and refits: the test runs the README's own
code block (extracted from README.md, so the README cannot drift from what works) with every
warning turned into an error, and checks the recovered structure and coefficients. A network
fit: marked ``slow``, so it runs in CI's second step (``-m "slow or dask"``)."""

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def api_snippet() -> str:
    """The python block of the README's "One page of API" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## One page of API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the API section should hold exactly one python block"
    return blocks[0]


def test_snippet_is_found():
    code = api_snippet()
    assert "dl.recover(" in code and "dl.fit(" in code
    compile(code, "README.md", "exec")


@pytest.mark.slow
def test_readme_snippet_recovers_the_interaction_terms(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)        # whatever the snippet might write stays here
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # any warning (fit, diagnostics, recovery) fails
        exec(compile(api_snippet(), "README.md", "exec"), namespace)
    rec, refit = namespace["rec"], namespace["refit"]
    # exactly the interaction terms, with beta = 0.9 and gamma = 0.8 within 10 %
    assert rec.support() == {"nn[0]": ["x*y"], "nn[1]": ["x*y"]}
    assert refit.success
    params = refit.params["value"]
    assert -params["c_nn0_xy"] == pytest.approx(0.9, rel=0.1)
    assert params["c_nn1_xy"] == pytest.approx(0.8, rel=0.1)
    # the hybrid fit reached the data: the refit of two coefficients is no worse than it
    assert namespace["result"].success
