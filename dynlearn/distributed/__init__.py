"""Independent work fanned out over Dask distributed (Dask is imported only when used)."""

from dynlearn.distributed.dask import Parallel, TaskError, local_client, parallel

__all__ = ["Parallel", "TaskError", "local_client", "parallel"]
