"""Stopping a verification's work on the Prover: ``vda-verifier cancel SESSION`` and Ctrl-C.

A verification that is stopped is not a verdict: the record stays ``incomplete``, its secret
spot-checks on disk, and ``verify --resume SESSION`` finishes it. What runs on the Prover is a
job (``POST /v1/jobs/{id}/cancel``, signed by its owner, cancels it and the Prover deletes its
partial arrays); a resumed session whose job was cancelled is queued again
(``POST /v1/jobs/{id}/resume``) and trained from its first chunk.

- :func:`cancel_record`: the Prover's job of a recorded session, cancelled if unfinished;
- :func:`cancel_on_interrupt`: around a wait on a Prover job, Ctrl-C (``KeyboardInterrupt``)
  asks the Prover to cancel that job before the interrupt goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from protocol.errors import ProtocolError
from protocol.wire import JobOut
from verifier_client.client import ProverClient, TransportError

if TYPE_CHECKING:
    from verifier_client.store import Record

__all__ = ["cancel_on_interrupt", "cancel_record"]

UNFINISHED = ("queued", "running")


def cancel_record(client: ProverClient, record: Record) -> tuple[JobOut | None, bool]:
    """Cancel the Prover's job of ``record`` if it is unfinished: the job as the Prover now
    holds it (None when the challenge never reached the Prover: nothing runs there) and
    whether this call cancelled it."""
    if record.prover_session is None:
        return None, False
    job = client.session(record.prover_session).job
    if job.status not in UNFINISHED:
        return job, False
    return client.cancel(job.id), True


@contextmanager
def cancel_on_interrupt(
    client: ProverClient, job_id: str, note: Callable[[str], None], resume_hint: str = ""
) -> Iterator[None]:
    """On Ctrl-C inside the block, cancel ``job_id`` on the Prover (best effort: a Prover that
    cannot be reached is said so) and let the interrupt go on."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            job = client.cancel(job_id)
            note(f"interrupted: the Prover's job {job_id} is {job.status}{resume_hint}")
        except (ProtocolError, TransportError) as exc:
            note(f"interrupted; the Prover's job {job_id} could not be cancelled: {exc}")
        raise
