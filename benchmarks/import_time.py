"""Start-up cost of dynlearn against the stack it stands on (issue #13).

Each case runs in a fresh ``python -X importtime`` process; its cost is the sum of the
self-times of every module imported by the case's code (Python's own start-up, before the
code runs, is left out). The median over ``--repeat`` processes per case is printed with
its ratio to the stack: numpy, scipy.integrate and sympy, which any use of dynlearn needs.
``-X importtime`` reports wall-clock time, which a loaded machine inflates; the CPU time
(user + system) of the same code in the same process is printed beside it, and its ratio
is the steadier figure on a shared machine.

Cases:

* ``stack``: ``import numpy, scipy.integrate, sympy``;
* ``import dynlearn``: the package alone (its names are imported on first use);
* ``model + simulate``: ``import dynlearn as dl`` and the names of a first script that
  builds a model and simulates it (``HybridModel``, ``Parameter``, ``MLP``, ``simulate``,
  ``Dataset``);
* ``+ fit``: the same and ``dl.fit``;
* ``every name``: ``from dynlearn import *``, which imports all that ``import dynlearn``
  imported before its names were imported on first use (issue #13).

The cases run interleaved (stack, dynlearn, ..., stack, dynlearn, ...) so that a change of
the machine's load hits all of them alike. Run from the repository root::

    python benchmarks/import_time.py            # 9 processes per case
    python benchmarks/import_time.py --repeat 21
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

MARK = "--dynlearn-import-time-mark--"

CASES = {
    "stack": "import numpy, scipy.integrate, sympy",
    "import dynlearn": "import dynlearn",
    "model + simulate": ("import dynlearn as dl; dl.HybridModel, dl.Parameter, dl.MLP, "
                         "dl.simulate, dl.Dataset"),
    "+ fit": ("import dynlearn as dl; dl.HybridModel, dl.Parameter, dl.MLP, dl.simulate, "
              "dl.Dataset, dl.fit"),
    "every name": "from dynlearn import *",
}

# "import time:  self [us] |  cumulative | imported package"
LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+\d+\s+\|\s*(\S+)")


def measure(code: str) -> tuple[float, float, set[str]]:
    """Seconds spent importing by ``code`` in a fresh process (the ``-X importtime`` sum,
    and the CPU time), and the modules it imported."""
    script = ("import os, sys; c0 = sum(os.times()[:2]); "
              f"sys.stderr.write({MARK!r} + '\\n'); sys.stderr.flush(); {code}; "
              "print(sum(os.times()[:2]) - c0)")
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", script],
                       capture_output=True, text=True, check=True)
    after = r.stderr.split(MARK, 1)[1]
    total, modules = 0, set()
    for m in LINE.finditer(after):
        total += int(m.group(1))
        modules.add(m.group(2))
    return total / 1e6, float(r.stdout.split()[-1]), modules


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="processes per case (default 9)")
    args = ap.parse_args(argv)
    for code in CASES.values():          # warm the bytecode caches, not counted
        measure(code)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    cpu: dict[str, list[float]] = {name: [] for name in CASES}
    modules: dict[str, set[str]] = {}
    for _ in range(args.repeat):
        for name, code in CASES.items():
            t, c, mods = measure(code)
            times[name].append(t)
            cpu[name].append(c)
            modules[name] = mods
    base, base_cpu = statistics.median(times["stack"]), statistics.median(cpu["stack"])
    print(f"python {sys.version.split()[0]}, median of {args.repeat} fresh processes each; "
          "importtime = python -X importtime (sum of self-times, wall clock), cpu = user + "
          "system time of the same code")
    print(f"{'case':<18} {'importtime ms':>13} {'min':>7} {'max':>7} {'ratio':>6} "
          f"{'cpu ms':>8} {'ratio':>6}")
    for name, ts in times.items():
        med, c = statistics.median(ts), statistics.median(cpu[name])
        print(f"{name:<18} {1e3 * med:13.1f} {1e3 * min(ts):7.1f} {1e3 * max(ts):7.1f} "
              f"{med / base:6.2f} {1e3 * c:8.1f} {c / base_cpu:6.2f}")
    heavy = ("pandas", "matplotlib", "dask", "distributed", "tqdm", "autograd")
    for name in CASES:
        if name == "stack":
            continue
        present = [h for h in heavy if h in modules[name]]
        print(f"{name}: imports {', '.join(present) if present else 'none'} of {heavy}")


if __name__ == "__main__":
    main()
