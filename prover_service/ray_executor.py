"""The ``ray`` executor: the Prover's chunks as Ray tasks on a local instance or a cluster.

Imported only when ``--executor ray`` is chosen (:func:`prover_service.executor.make_executor`),
so a Verifier, ``--help`` and the local executor never import Ray.

* **Cluster.** ``address=None`` connects to ``RAY_ADDRESS`` if set, else starts a local instance;
  ``"ray://head:10001"`` (Ray Client) or ``"head:6379"`` joins an existing cluster (KubeRay's head
  service is the same). If Ray is already initialised in this process (a test, a notebook), that
  instance is used as it is.
* **Resources.** Each chunk is one task that asks for ``num_cpus`` CPUs and ``num_gpus`` GPUs, so
  Ray places GPU chunks on GPU nodes only. At most :attr:`RayExecutor.slots` chunks are in flight
  (``workers``, or as many as the cluster's CPUs or GPUs hold).
* **The task object** is put in the object store once per executor and handed to the workers by
  reference, inside a list so that Ray does not resolve it per call; a worker process resolves it
  the first time it sees that reference and keeps it (``_WORKER_TASKS``), so a 5 MB dataset
  crosses the wire once per worker process, not once per chunk. A task loaded from a file
  (``FILE.py:FACTORY``) is pickled by value, since its module is not importable on the workers.
* **Faults.** A chunk whose worker process or node dies is retried by Ray up to ``max_retries``
  times on another worker; after that the chunk is :class:`~prover_service.executor.ChunkLost`
  and the job fails with that reason. An exception raised by the task itself is not retried (the
  same rows and seed would raise again) and reaches the caller as its own type.
* **Same bytes.** A worker runs :func:`protocol.evaluation.run_task` on exactly the rows it was
  given, with Ray's ``OMP_NUM_THREADS`` equal to the task's CPUs; results are put back in row
  order by the caller, so the output does not depend on which worker ran what.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from importlib.machinery import PathFinder
from typing import Any

import numpy as np
import ray
from numpy.typing import NDArray
from ray import cloudpickle
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from protocol.evaluation import run_task
from protocol.tasks import Task, TaskBase, TrainingOutputs, declared, spec_hash
from prover_service.executor_base import Chunk, ChunkLost, Executor, ExecutorKind, OnChunk

__all__ = ["RayExecutor"]

_WORKER_TASKS: dict[str, TaskBase] = {}  # in each worker process: object ref (hex) -> task
_WORKER_KEEP = 4  # tasks a worker process keeps (oldest dropped first)


def _train_chunk(
    boxed: list[Any], masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """Worker side: the chunk's values (K, Z) and probes (K, P); the task fetched once."""
    key = boxed[0].hex()
    task = _WORKER_TASKS.get(key)
    if task is None:
        while len(_WORKER_TASKS) >= _WORKER_KEEP:
            del _WORKER_TASKS[next(iter(_WORKER_TASKS))]
        task = _WORKER_TASKS[key] = ray.get(boxed[0])
    out = run_task(task, masks, seeds)
    return out.values, out.probes


_remote_train_chunk = ray.remote(_train_chunk)


def _pickle_by_value_if_needed(task: TaskBase) -> None:
    """Make a task class from a file (not importable by name on a worker) travel by value."""
    inner = getattr(task, "inner", task)
    for obj in (task, inner):
        name = type(obj).__module__
        module = sys.modules.get(name)
        if module is None or name == "__main__":
            continue
        top = name.partition(".")[0]  # found on sys.path, not only held in sys.modules
        importable = top in sys.builtin_module_names or PathFinder.find_spec(top) is not None
        if not importable:
            cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]  # cloudpickle ships no annotations


class RayExecutor(Executor):
    """Chunks as Ray tasks (module doc)."""

    kind = ExecutorKind.RAY

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int = 0,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_retries: int = 3,
    ) -> None:
        if workers < 0 or num_cpus < 0 or num_gpus < 0 or max_retries < 0:
            raise ValueError("workers, num_cpus, num_gpus and max_retries must be >= 0")
        self.address, self.workers = address, workers
        self.num_cpus, self.num_gpus, self.max_retries = num_cpus, num_gpus, max_retries
        self._refs: dict[tuple[str, int], Any] = {}  # (spec hash, id) -> ObjectRef of the task
        self._started_here = False
        self._lock = threading.Lock()  # the two job lanes share this executor

    def _connect(self) -> None:
        with self._lock:
            if not ray.is_initialized():
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
                self._started_here = True

    @property
    def slots(self) -> int:
        if self.workers:
            return self.workers
        self._connect()
        have = ray.cluster_resources()  # type: ignore[no-untyped-call]  # ray leaves it unannotated
        if self.num_gpus > 0:
            return max(1, int(have.get("GPU", 0) / self.num_gpus))
        return max(1, int(have.get("CPU", 1) / max(self.num_cpus, 1e-9)))

    def _task_ref(self, task: TaskBase) -> Any:
        key = (spec_hash(task), id(task))
        with self._lock:
            if key not in self._refs:
                _pickle_by_value_if_needed(task)
                self._refs[key] = ray.put(task)
            return self._refs[key]

    def map_chunks(self, task: Task, chunks: Sequence[Chunk], on_chunk: OnChunk) -> None:
        self._connect()
        t = declared(task)
        ref = self._task_ref(t)
        remote = _remote_train_chunk.options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
            retry_exceptions=False,
        )  # fmt: skip
        todo = list(chunks)[::-1]
        pending: dict[Any, Chunk] = {}
        width = self.slots
        try:
            while todo or pending:
                while todo and len(pending) < width:
                    chunk = todo.pop()
                    pending[remote.remote([ref], chunk.masks, chunk.seeds)] = chunk
                ready, _ = ray.wait(list(pending), num_returns=1)
                chunk = pending.pop(ready[0])
                on_chunk(chunk, self._fetch(ready[0], chunk))
        finally:
            for left in pending:
                ray.cancel(left, force=False)

    def _fetch(self, ref: Any, chunk: Chunk) -> TrainingOutputs:
        try:
            values, probes = ray.get(ref)
        except RayTaskError as exc:  # the task itself raised: its own exception, not retried
            cause = exc.cause if isinstance(exc.cause, Exception) else None
            if cause is not None:
                raise cause from None
            raise ChunkLost(f"chunk [{chunk.start}, {chunk.stop}) failed: {exc}") from None
        except (RayError, TaskCancelledError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ChunkLost(
                f"chunk [{chunk.start}, {chunk.stop}) lost after {self.max_retries} retries: "
                f"{type(exc).__name__}: {first}"
            ) from None
        return TrainingOutputs(np.asarray(values), np.asarray(probes))

    def close(self) -> None:
        self._refs.clear()
        if self._started_here and ray.is_initialized():
            ray.shutdown()
        self._started_here = False
