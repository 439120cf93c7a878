"""Measurements: experiments, datasets (the one CSV reader) and input signals."""

from dynlearn.data.dataset import Dataset, Experiment, InputSignal, as_dataset

__all__ = ["Dataset", "Experiment", "InputSignal", "as_dataset"]
