"""The audit of one transcript, pure: signed messages and their arrays in, :class:`AuditReport` out.

A third party auditing a session runs :func:`audit_transcript`, the Verifier's own checks on what
the transcript holds; ``vda-verifier audit`` (:mod:`verifier_client.audit`, which fetches the
transcript and adds the online log checks) and the Prover's ``/audit`` page
(:mod:`prover_service.audit_page`, which reads it from its database and renders it) both call
it, so the same transcript gets the same report from either. The steps the session and the
audit share are defined here once: the range check of a response's arrays
(:func:`check_values`, :func:`check_probes`), the gathering and comparison of the opened
spot-check rows (:func:`spot_check_rows`, :func:`spot_check`); the certificate is
:func:`protocol.decision.certify_challenge` and the witness route :mod:`protocol.witness_route`.

The checks, in order (each a row of the report, named as below):

1. the attribution manifest is signed by the Prover, and the datamodel bytes hash to it;
2. the challenge is signed by the key it names and names that attribution and task;
3. the transcript is complete: a response and a verdict (else the audit stops here);
4. the response is signed by the Prover and answers that challenge; its arrays hash to it;
5. the verdict is signed by the challenge's verifier, names that challenge and response, and
   opens the spot-check commitment;
6. every unsigned field shown beside the signed verdict (the transcript's ``verdict``,
   ``status`` and ``session_id``) agrees with it;
7. the values are in range (:func:`check_values`, :func:`check_probes`); if not, the decision
   is the session's abort ``bad_response`` and no spot-check is re-trained;
8. the opened spot-checks, re-trained here (:func:`protocol.evaluation.run_task`), compare with
   the response as the verdict's ``spot_mismatches`` says (a verdict that omits the count
   after a response in range fails; after one out of range it must be absent or 0); the
   witness route instead recomputes every subset's witness check and its rejections;
9. the certificate (:func:`protocol.decision.certify_challenge`) is recomputed from the
   response and the opened spot-checks and matches the verdict's ``certified_epsilon``;
10. the decision (:func:`protocol.decision.decide`) reproduces the recorded verdict and reason.

A failure to open or parse anything in steps 1-5 is one row, ``signatures, hashes and formats``,
with the reason. :attr:`AuditReport.ok` holds iff every row passed and the recomputed
``verdict:reason`` is the recorded one. The arrays come from an :class:`ArraySource` (SHA-256
to bytes; a bundle's blobs, the Prover's array store); every byte is checked against the hash
its signed message names before it is parsed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from protocol.certificate import Certificate
from protocol.checkequiv import EquivReport, check_equiv
from protocol.datamodel import Datamodel
from protocol.decision import Decision, abort_decision, certify_challenge, decide
from protocol.errors import BadResponseError, ProtocolError, VerificationError
from protocol.evaluation import run_task
from protocol.messages import (
    ArrayRef,
    AttributionManifest,
    Challenge,
    ResponseManifest,
    Verdict,
    array_from_npy,
    commit_spot_checks,
)
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.signing import SignedMessage, open_signed
from protocol.tasks import Task, declared, spec_hash
from protocol.witness_route import route_from_arrays, witness_decision, witness_ref

__all__ = [
    "ArraySource",
    "AuditReport",
    "Opened",
    "Train",
    "Transcript",
    "audit_transcript",
    "check_probes",
    "check_values",
    "shown_fields",
    "spot_check",
    "spot_check_rows",
    "unsigned_fields",
]

Design = ChallengeDesign | SharedBaseDesign
#: A trainer of spot-check rows: (masks (K, N) bool, seeds (K,) uint64) -> values (K, Z)
#: float64 and CHECKEQUIV probes (K, P) float32. The session's counts its trainings and shows
#: progress; the audit's is :func:`protocol.evaluation.run_task`.
Train = Callable[
    [NDArray[np.bool_], NDArray[np.uint64]], tuple[NDArray[np.float64], NDArray[np.float32]]
]


class Transcript(BaseModel):
    """Every signed message of one session, as ``GET /v1/sessions/{id}/transcript`` shows it,
    with the fields the Prover shows unsigned beside them (``session_id``, ``status``,
    ``verdict``: checked against the signed verdict, step 6). The arrays the messages name
    are not in it: they come from an :class:`ArraySource`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    session_id: str = Field(max_length=64)
    status: str = Field(max_length=16)
    verdict: str | None
    prover_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    attribution: SignedMessage
    challenge: SignedMessage
    response: SignedMessage | None
    verdict_message: SignedMessage | None


class ArraySource(Protocol):
    """The bytes a transcript's messages name, by their SHA-256 (hex): the datamodel under the
    attribution's ``content_hash``, each response array under its ``ArrayRef.sha256``. Raises
    :class:`KeyError` for bytes it does not hold. Any ``Mapping[str, bytes]`` is one; what it
    returns is checked against the hash here, so it need not be trusted."""

    def __getitem__(self, sha256: str, /) -> bytes: ...


@dataclass(frozen=True)
class Opened:
    """What a transcript holds, each part verified (steps 1-5): for a page's charts.
    ``values`` (|E|, Z) float64, the response's, in design order."""

    challenge: Challenge
    model: Datamodel
    design: Design
    values: NDArray[np.float64]


@dataclass
class AuditReport:
    """Each check with its outcome (``{"check", "ok", "detail"}``), the recorded and the
    recomputed ``verdict:reason``; ``ok`` iff every check passed and the two agree.
    ``certificate`` (the one recomputed, if any) and ``opened`` are kept for rendering and
    are not part of :meth:`as_dict`."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    recorded: str | None = None
    recomputed: str | None = None
    certificate: Certificate | None = None
    opened: Opened | None = None

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        """Append one check; returns ``ok``."""
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        """Every check passed and the decision recomputed is the recorded one."""
        return all(c["ok"] for c in self.checks) and self.recorded == self.recomputed

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: ok, recorded, recomputed, checks."""
        return {
            "ok": self.ok,
            "recorded": self.recorded,
            "recomputed": self.recomputed,
            "checks": self.checks,
        }


# -- the steps the session shares ------------------------------------------------------------


def check_values(values: NDArray[Any], shape: tuple[int, ...], bound: float) -> NDArray[np.float64]:
    """A response's values as float64, refused unless of ``shape`` (|E|, Z), every one finite
    and in [-bound, bound]: :class:`BadResponseError` with the reason (the Prover misbehaved:
    the Verifier aborts ``bad_response`` rather than carry NaN into its figures)."""
    out = np.asarray(values, dtype=np.float64)
    if out.shape != shape:
        raise BadResponseError(f"values of shape {out.shape}, expected {shape}")
    finite = np.isfinite(out)
    if not finite.all():
        raise BadResponseError(f"{int((~finite).sum())} values are NaN or infinite")
    if out.size and float(np.abs(out).max()) > bound:
        raise BadResponseError(f"values lie outside [-{bound:g}, {bound:g}]")
    return out


def check_probes(probes: NDArray[Any], n_subsets: int) -> NDArray[np.float32]:
    """A response's CHECKEQUIV probes as float32, (|E|, P) and finite, or
    :class:`BadResponseError`."""
    out = np.asarray(probes).astype(np.float32)
    if out.ndim != 2 or len(out) != n_subsets or not np.isfinite(out).all():
        raise BadResponseError(f"probes of shape {out.shape} (or not finite)")
    return out


def spot_check_rows(
    design: Design, spots: Sequence[int]
) -> tuple[NDArray[np.bool_], NDArray[np.uint64]]:
    """The rows of the opened spot-checks C: masks (|C|, N) bool and training seeds (|C|,)
    uint64, in the order of ``spots`` (subset indices into E)."""
    idx = np.asarray(list(spots), dtype=np.int64)
    if len(idx) == 0:
        return np.zeros((0, design.n_train), dtype=bool), np.zeros(0, dtype=np.uint64)
    masks = np.stack([design.masks(int(i), int(i) + 1)[0] for i in idx])
    return masks, design.seeds()[idx]


def spot_check(
    design: Design, spots: Sequence[int], values: NDArray[np.float64],
    probes: NDArray[np.float32], tau: float, train: Train,
) -> EquivReport:  # fmt: skip
    """Re-train the spot-checks ``spots`` (:func:`spot_check_rows`) with ``train`` and compare
    them with the response's rows under CHECKEQUIV at ``tau``
    (:func:`protocol.checkequiv.check_equiv`). ``values`` (|E|, Z), ``probes`` (|E|, P)."""
    masks, seeds = spot_check_rows(design, spots)
    local_v, local_p = train(masks, seeds)
    idx = np.asarray(list(spots), dtype=np.int64)
    return check_equiv(values[idx], probes[idx].astype(np.float32), local_v, local_p, tau)


def unsigned_fields(rep: AuditReport, shown: dict[str, dict[str, Any]], verdict: Verdict) -> bool:
    """Check (step 6) that what the Prover shows unsigned agrees with the signed ``verdict``:
    ``shown`` maps a name (``transcript``, ``session``) to the ``verdict``, ``status`` and
    ``session_id`` shown there; the disagreements are named in the check's detail."""
    want = {"verdict": verdict.verdict, "status": "decided", "session_id": verdict.session_id}
    bad = [f"{name}.{k} is {fields.get(k)!r}, signed {v!r}" for name, fields in shown.items()
           for k, v in want.items() if fields.get(k) != v]  # fmt: skip
    return rep.add("unsigned fields agree with the signed verdict", not bad, "; ".join(bad))


def shown_fields(shown: Any) -> dict[str, Any]:
    """The unsigned ``verdict``, ``status`` and ``session_id`` of a :class:`Transcript` or a
    session as the Prover shows it (any object with those attributes)."""
    return {k: getattr(shown, k) for k in ("verdict", "status", "session_id")}


# -- the audit -------------------------------------------------------------------------------


def _train(task: Task) -> Train:
    def train(
        masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        out = run_task(task, masks, seeds)
        return out.values, out.probes

    return train


def _bytes(arrays: ArraySource, sha256: str, what: str) -> bytes:
    try:
        return arrays[sha256]
    except KeyError:
        raise ProtocolError(f"the {what} ({sha256[:16]}...) is not among the arrays") from None


def _array(arrays: ArraySource, ref: ArrayRef) -> NDArray[Any]:
    return array_from_npy(ref, _bytes(arrays, ref.sha256, f"array {ref.name!r}"))


def _decided(rep: AuditReport, decision: Decision | str) -> AuditReport:
    rep.recomputed = decision if isinstance(decision, str) else \
        f"{decision.verdict}:{decision.reason}"  # fmt: skip
    rep.add("decision reproduces the recorded verdict", rep.recomputed == rep.recorded,
            f"recomputed {rep.recomputed}, recorded {rep.recorded}")  # fmt: skip
    return rep


def _certificate_check(rep: AuditReport, cert: Certificate, figures: dict[str, float]) -> None:
    recorded = figures.get("certified_epsilon", math.inf)
    here = cert.certified_epsilon
    rep.certificate = cert
    rep.add("certificate recomputed from the transcript",
            math.isclose(here, recorded, rel_tol=1e-9, abs_tol=1e-12),
            f"certified epsilon {here:.6g} here, {recorded:.6g} recorded")  # fmt: skip


def audit_transcript(
    transcript: Transcript, arrays: ArraySource, task: Task, prover_key: str | None = None
) -> AuditReport:
    """Run every check (module doc) on ``transcript`` with the bytes in ``arrays``, for
    ``task`` (its spec hash must be the one the attribution and the challenge name).
    ``prover_key`` (hex): the key the Prover must have signed with (default: the one the
    transcript names). Never raises for what the transcript holds: every fault is a row."""
    rep = AuditReport()
    t = transcript
    key = prover_key or t.prover_key
    try:
        attribution = open_signed(t.attribution, AttributionManifest, signer=key)
        model = Datamodel.from_bytes(_bytes(arrays, attribution.content_hash, "datamodel"))
        rep.add("attribution signed by the Prover; datamodel matches its hash",
                model.content_hash == attribution.content_hash)  # fmt: skip
        challenge = open_signed(t.challenge, Challenge)
        rep.add(
            "challenge signed by the key it names", t.challenge.signer == challenge.verifier_key
        )
        rep.add("challenge names this attribution and task",
                challenge.attribution_hash == attribution.content_hash
                and challenge.task_hash == attribution.task_hash == spec_hash(task))  # fmt: skip
        if t.response is None or t.verdict_message is None:
            rep.add("transcript complete (response and verdict)", False, "missing messages")
            return rep
        response = open_signed(t.response, ResponseManifest, signer=key)
        rep.add("response answers this challenge",
                response.challenge_digest == t.challenge.digest)  # fmt: skip
        raw_values, raw_probes = _array(arrays, response.values), _array(arrays, response.probes)
        rep.add("response arrays match their signed hashes", True)
        verdict = open_signed(t.verdict_message, Verdict, signer=challenge.verifier_key)
        rep.recorded = f"{verdict.verdict}:{verdict.reason}"
        rep.add("verdict names this challenge and response",
                (verdict.challenge_digest, verdict.response_digest)
                == (t.challenge.digest, t.response.digest))  # fmt: skip
        opened = commit_spot_checks(verdict.spot_check_indices, bytes.fromhex(verdict.salt))
        rep.add("spot-check commitment opens", opened == challenge.spot_check_commitment)
        unsigned_fields(rep, {"transcript": shown_fields(t)}, verdict)
        design = challenge.design(task.n_train)
    except (ProtocolError, ValueError) as exc:
        rep.add("signatures, hashes and formats", False, str(exc))
        return rep

    as_float = np.asarray(raw_values, dtype=np.float64)
    rep.opened = Opened(challenge, model, design, as_float)
    figures = dict(verdict.figures)
    try:  # the range check the session made on download
        values = check_values(as_float, (len(design), task.n_targets), task.bound)
        probes = check_probes(raw_probes, len(design))
    except BadResponseError as exc:
        rep.add("spot-checks re-trained here agree with the verdict's count",
                int(figures.get("spot_mismatches", 0)) == 0,
                "none re-trained here: the values are malformed or out of range")  # fmt: skip
        return _decided(rep, abort_decision(exc, epsilon=challenge.epsilon, delta=challenge.delta))
    if challenge.witness_limit is not None:  # the witness route: no spot-checks to re-train
        return _audit_witness(rep, arrays, challenge, response, task, model, design, values,
                              figures)  # fmt: skip
    try:
        spot = spot_check(design, verdict.spot_check_indices, values, probes, challenge.tau,
                          _train(task))  # fmt: skip
    except ProtocolError as exc:
        rep.add("spot-checks re-trained here agree with the verdict's count", False, str(exc))
        return rep
    rep.add("spot-checks re-trained here agree with the verdict's count",
            spot.mismatches == int(figures.get("spot_mismatches", -1)),
            f"{spot.mismatches} mismatches here")  # fmt: skip
    if challenge.estimator == "residual":
        rep.add("decision rule", False, "the residual estimator is a baseline: not audited")
        return rep
    cert = None
    if spot.all_match:
        try:
            cert = certify_challenge(challenge, task.bound, model, design, values,
                                     verdict.spot_check_indices)  # fmt: skip
        except ProtocolError as exc:  # e.g. a clt challenge at a size clt is now refused at
            rep.add("certificate recomputed from the transcript", False, str(exc))
            return _decided(rep, "refused")
        _certificate_check(rep, cert, figures)
    decision = decide(epsilon=challenge.epsilon, delta=challenge.delta, certificate=cert,
                      spot=spot)  # fmt: skip
    return _decided(rep, decision)


def _audit_witness(
    rep: AuditReport, arrays: ArraySource, challenge: Challenge, response: ResponseManifest,
    task: Task, model: Datamodel, design: Design, values: NDArray[np.float64],
    figures: dict[str, float],
) -> AuditReport:  # fmt: skip
    """The witness route's recomputation (:mod:`protocol.witness_route`): every subset's check
    and the certificate, from the transcript's witness."""
    try:
        base = declared(task)
        ref = witness_ref(challenge, response, base, len(values))
    except VerificationError as exc:  # the session aborted such a response with this reason
        return _decided(rep, abort_decision(exc, epsilon=challenge.epsilon, delta=challenge.delta))
    except ProtocolError as exc:  # not a witness task: nothing to recompute
        rep.add("witness readable", False, str(exc))
        return rep
    try:
        blob = _bytes(arrays, ref.sha256, f"array {ref.name!r}")
        theta = np.asarray(array_from_npy(ref, blob), dtype=np.float64)
        route = route_from_arrays(challenge, base, design, theta, values, len(blob))
    except ProtocolError as exc:
        rep.add("witness readable", False, str(exc))
        return rep
    rep.add("witness rejections recomputed",
            len(route.rejected) == figures.get("witness_rejected", -1),
            f"{len(route.rejected)} rejected here")  # fmt: skip
    decision = witness_decision(challenge, base, model, design, route)
    if decision.certificate is not None:
        _certificate_check(rep, decision.certificate, figures)
    return _decided(rep, decision)
