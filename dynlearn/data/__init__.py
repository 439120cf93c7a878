"""Measurements: experiments, datasets (the one CSV reader), input signals and the checks
of time grids and initial states."""

from dynlearn.data.checks import check_times, check_y0
from dynlearn.data.dataset import Dataset, Experiment, as_dataset
from dynlearn.data.signals import InputSignal, as_input_signal

__all__ = ["Dataset", "Experiment", "InputSignal", "as_dataset", "as_input_signal",
           "check_times", "check_y0"]
