"""Where independent work runs: the executor protocol (serial, a user's ``map``, Dask), the
Dask runtime and a fit's objective split over Dask workers (Dask is imported only when
used)."""

from dynlearn.distributed.dask import Parallel, TaskError, local_client, parallel
from dynlearn.distributed.executor import (
    DaskExecutor,
    Executor,
    MapExecutor,
    SerialExecutor,
    resolve_executor,
)

__all__ = ["DaskExecutor", "Executor", "MapExecutor", "Parallel", "SerialExecutor", "TaskError",
           "local_client", "parallel", "resolve_executor"]
