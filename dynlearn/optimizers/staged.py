"""Several optimizers in sequence."""

from __future__ import annotations

from dynlearn.errors import OptionError
from dynlearn.optimizers.base import Optimizer

__all__ = ["Staged"]


class Staged(Optimizer):
    """Several optimizers in sequence, each starting at the best point of the previous one.

    :func:`dynlearn.fit` runs the stages (:meth:`stages`) one after the other; the fit's
    status is the last stage's.

    Parameters
    ----------
    stages : list of Optimizer
    """

    def __init__(self, stages):
        stages = list(stages)
        if not stages or not all(isinstance(s, Optimizer) for s in stages):
            raise OptionError("Staged([...]) needs a non-empty list of optimizer objects, e.g. "
                              "Staged([dl.Adam(200), dl.LevenbergMarquardt()])")
        self.stages_ = stages

    def stages(self) -> list[Optimizer]:
        """Every stage, nested stages flattened."""
        out = []
        for s in self.stages_:
            out += s.stages()
        return out

    def __repr__(self) -> str:
        return f"Staged({self.stages_!r})"

    def to_dict(self) -> dict:
        return {"type": "Staged", "stages": [s.to_dict() for s in self.stages_]}
