"""Progress display (issue #13): the stage, its budget and the time left; a tqdm bar on a
terminal, plain lines with no carriage return in a file or a log."""

import io

import pytest

import dynlearn as dl
from dynlearn.report.progress import ProgressBar, is_interactive
from dynlearn.testing import decay_experiments, decay_model


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_plain_lines_only():
    out = io.StringIO()
    bar = ProgressBar("fit", unit="it", stream=out, interval=3600.0)
    assert not bar.interactive and not is_interactive(out)
    bar.reset(total=4, stage="stage 1/2 Adam")
    bar.set_postfix(loss="0.5")
    bar.update()
    assert out.getvalue() == "fit: stage 1/2 Adam (up to 4 it)\n"   # nothing within interval
    bar.interval = 0.0
    bar.update()
    status = out.getvalue().splitlines()[-1]
    assert status.startswith("fit: 2/4 it, loss 0.5, ") and "left" in status
    bar.update(3)            # past the budget: no fraction, no time left
    assert out.getvalue().splitlines()[-1].startswith("fit: 5 it, loss 0.5, ")
    assert "left" not in out.getvalue().splitlines()[-1]
    bar.close()
    bar.close()              # twice is harmless
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("fit: ended after 5 it, loss 0.5 in ")
    assert sum(line.startswith("fit: ended") for line in lines) == 1
    assert "\r" not in out.getvalue()


def test_on_a_terminal_a_tqdm_bar():
    pytest.importorskip("tqdm")
    out = Terminal()
    bar = ProgressBar("fit", total=10, stream=out)
    assert bar.interactive
    bar.reset(total=10, stage="LevenbergMarquardt")
    bar.update(3)
    bar.close()
    assert "\r" in out.getvalue() and "LevenbergMarquardt" in out.getvalue()


def test_a_fit_logs_its_stages_without_carriage_returns(capsys):
    """dl.fit(progress=True) with stderr redirected (pytest's capture is not a terminal):
    one line per stage with its budget and one at the end, no tqdm redraws."""
    r = dl.fit(decay_model(), decay_experiments(1),
               optimizer=dl.Staged([dl.Adam(5, lr=0.05), dl.LevenbergMarquardt(30)]))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("fit: ")]
    assert lines[0] == "fit: stage 1/2 Adam (up to 5 it)"
    assert lines[1] == "fit: stage 2/2 LevenbergMarquardt (up to 30 it)"
    assert lines[-1].startswith("fit: ended after ") and f"loss {r.loss:.6g}" in lines[-1]
    dl.fit(decay_model(), decay_experiments(1), progress=False)
    assert capsys.readouterr().err == ""
