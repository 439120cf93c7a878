"""Shared helpers for the peer benchmark scripts (argument parsing, timing, output)."""

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version

import numpy as np

PROBLEMS = ("lv_ude", "spiral", "robertson", "lv_ude_fit")


def parse_args(description):
    """Parse ``--problem``, ``--input``, ``--repeats`` and ``--slow-repeats``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--problem", required=True, choices=PROBLEMS)
    parser.add_argument("--input", required=True, help="problem .npz file")
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="repeats for fast measurements (default 20)",
    )
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=3,
        help="repeats for slow (adjoint) measurements (default 3)",
    )
    return parser.parse_args()


def load(path):
    """Load the problem ``.npz`` into a dict of float64 arrays."""
    with np.load(path) as data:
        return {k: np.asarray(data[k], dtype=np.float64) for k in data.files}


def layers(data):
    """Return ``[(W0, b0), (W1, b1), ...]`` from the loaded problem."""
    out = []
    while f"W{len(out)}" in data:
        i = len(out)
        out.append((data[f"W{i}"], data[f"b{i}"]))
    return out


def median_ms(fn, repeats, warmup=True):
    """Median wall time of ``fn()`` in milliseconds; returns (ms, last result)."""
    if warmup:
        fn()
    times = []
    result = None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), result


def versions(*names):
    """Installed versions of the given distributions."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _clean(obj):
    """Make ``obj`` JSON-safe: arrays to lists, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class JsonStdout:
    """Route all prints (Python and C level) to stderr; emit one JSON line at the end.

    Use as a context manager; call :meth:`emit` once with the result dict.
    """

    def __enter__(self):
        sys.stdout.flush()
        self._saved = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return self

    def emit(self, result):
        """Write ``result`` as one JSON line to the real stdout."""
        line = json.dumps(_clean(result)) + "\n"
        os.write(self._saved, line.encode())

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        sys.stdout = sys.__stdout__
        return False


def run(description, solvers, peer, packages):
    """Entry point shared by the peers.

    ``solvers`` maps problem name to ``fn(data, args) -> dict``; problems not in
    it are reported as skipped. Errors are reported as ``{"error": ...}`` with
    exit status 1.
    """
    args = parse_args(description)
    with JsonStdout() as out:
        base = {"peer": peer, "problem": args.problem, "versions": versions(*packages)}
        if args.problem not in solvers:
            out.emit({"skipped": f"{peer} does not handle {args.problem}", **base})
            return 0
        try:
            result = solvers[args.problem](load(args.input), args)
        except Exception as exc:  # noqa: BLE001 - reported as JSON
            traceback.print_exc()
            out.emit({"error": f"{type(exc).__name__}: {exc}", **base})
            return 1
        out.emit({**base, **result})
    return 0
