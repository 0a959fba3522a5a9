"""The tasks a Prover serves, by spec hash, and whether each has passed its start-up check.

Built from the settings' task references (:func:`protocol.tasks.load_task`). The checks run in
the background (:class:`prover_service.task_check.StartupChecks`): ``/v1/info`` answers at once,
and work on a task is refused with 503 until its check has passed (:meth:`TaskRegistry.task`).
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.tasks import TaskBase, load_task, spec_hash
from prover_service.errors import NotFound
from prover_service.task_check import StartupChecks

__all__ = ["TaskRegistry"]


class TaskRegistry:
    """The served tasks (``tasks``: spec hash -> task) and their start-up checks (``checks``)."""

    def __init__(self, refs: Sequence[str], check: bool = True) -> None:
        self.tasks: dict[str, TaskBase] = {}
        labels: dict[str, str] = {}
        for ref in refs:
            task = load_task(ref)
            self.tasks[spec_hash(task)] = task
            labels[spec_hash(task)] = ref
        self.checks = StartupChecks(self.tasks if check else {}, labels)

    def task(self, task_hash: str, wait: bool = False) -> TaskBase:
        """A served task; 404 if unknown, 503 while its start-up check runs or if it failed.
        ``wait`` (the job workers: a job resumed at start-up) first waits for the checks."""
        if task_hash not in self.tasks:
            raise NotFound(f"unknown task hash {task_hash!r}; GET /v1/info lists this Prover's")
        if wait:
            self.checks.wait()
        self.checks.require(task_hash)
        return self.tasks[task_hash]
