"""Third-party audit of a transcript: every signature, every hash, the commitment, and the
decision recomputed from what the transcript holds.

Anyone with the transcript (``GET /v1/sessions/{id}/transcript`` plus the arrays it names) and
the task can run it; no private key is needed. The checks, in order:

1. the attribution manifest is signed by the Prover, and the datamodel bytes hash to it;
2. the challenge is signed by the key it names and names that attribution and task;
3. the response is signed by the Prover, answers that challenge, and its arrays hash to it;
4. the verdict is signed by the challenge's verifier, names that challenge and response, and
   opens the spot-check commitment;
5. the opened spot-checks, re-trained here, compare with the response as the verdict says;
6. the certificate (:func:`protocol.certificate.certify`, the same call the session made) is
   recomputed from the response and the opened spot-checks, and the decision
   (:func:`protocol.decision.decide`) reproduces the recorded verdict and reason.

7. every unsigned field the Prover shows beside the signed verdict (the transcript's and the
   session's ``verdict`` and ``status``, its ``session_id``) agrees with it: a Prover that
   flips an abort to accept in its database, where its listings read it, is caught;
8. (online, :func:`audit_log`) the Prover's transparency log: its tree head is signed by the
   Prover, every message of the transcript is included in it, and it is consistent with every
   earlier head the auditor holds (the Verifier's records keep the last head each audit saw),
   so a Prover that drops or rewrites a session, an aborted one say, is caught. These checks
   are added to the report; the decision is recomputed as above, unchanged;
9. (online, :func:`audit_session`, with the Verifier's records: ``audit`` reads them by
   default) every session a held head covers is still in the log (its challenge, response and
   verdict, as recorded here), still shown by the Prover, with the verdict signed here; a
   session the records hold and the Prover no longer shows fails the audit (exit 1), it is
   not an error.

A transcript can be saved to one self-contained JSON file (arrays base64-encoded) and audited
offline with ``audit --file``; tampering with any byte of it is detected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checkequiv import check_equiv
from protocol.datamodel import Datamodel
from protocol.decision import certify_challenge, decide
from protocol.errors import BadResponseError, ProtocolError
from protocol.messages import (
    ArrayRef,
    AttributionManifest,
    Challenge,
    ResponseManifest,
    Verdict,
    array_from_npy,
    commit_spot_checks,
)
from protocol.signing import SignedMessage, open_signed
from protocol.tasks import Task, declared, spec_hash
from protocol.transparency import (
    LogProofError,
    TreeHead,
    leaf_hash,
    log_entry,
    verify_consistency,
    verify_inclusion,
)
from protocol.wire import SessionOut
from verifier_client.client import ProverClient, ProverRefused
from verifier_client.session import train_local
from verifier_client.store import Record

__all__ = [
    "AuditReport",
    "audit",
    "audit_held",
    "audit_log",
    "audit_session",
    "fetch_bundle",
    "load_bundle",
    "save_bundle",
    "unsigned_fields",
]


@dataclass
class AuditReport:
    """Each check with its outcome; ``ok`` iff every check passed."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    recorded: str | None = None
    recomputed: str | None = None

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks) and self.recorded == self.recomputed

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "recorded": self.recorded,
            "recomputed": self.recomputed,
            "checks": self.checks,
        }


def fetch_bundle(client: ProverClient, session_id: str, key: Any) -> dict[str, Any]:
    """The transcript and every blob it names, fetched over REST."""
    transcript = client.transcript(session_id, key).model_dump(mode="json")
    blobs: dict[str, str] = {}
    content = transcript["attribution"]["payload"]["content_hash"]
    task = transcript["attribution"]["payload"]["task_hash"]
    raw = client.datamodel_bytes(content, task)
    blobs[hashlib.sha256(raw).hexdigest()] = base64.b64encode(raw).decode()
    if transcript.get("response"):
        payload = transcript["response"]["payload"]
        for name in ("values", "probes", "witness"):
            if payload.get(name) is None:  # the witness only on the witness route
                continue
            ref = ArrayRef.model_validate(payload[name])
            data = client.array_bytes(ref)
            blobs[hashlib.sha256(data).hexdigest()] = base64.b64encode(data).decode()
    return {"transcript": transcript, "blobs": blobs}


def save_bundle(bundle: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(bundle))


def load_bundle(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"cannot read transcript file {str(path)!r}: {exc}") from None


def _blob(bundle: dict[str, Any], sha: str) -> bytes:
    data = base64.b64decode(bundle["blobs"].get(sha, ""))
    return data


def audit(bundle: dict[str, Any], task: Task, prover_key: str | None = None) -> AuditReport:
    """Run every check (module doc) on a transcript bundle."""
    rep = AuditReport()
    t = bundle["transcript"]
    key = prover_key or t["prover_key"]
    try:
        a_signed = SignedMessage.model_validate(t["attribution"])
        attribution = open_signed(a_signed, AttributionManifest, signer=key)
        model = Datamodel.from_bytes(_blob(bundle, attribution.content_hash))
        rep.add(
            "attribution signed by the Prover; datamodel matches its hash",
            model.content_hash == attribution.content_hash,
        )
        c_signed = SignedMessage.model_validate(t["challenge"])
        challenge = open_signed(c_signed, Challenge)
        rep.add("challenge signed by the key it names", c_signed.signer == challenge.verifier_key)
        rep.add(
            "challenge names this attribution and task",
            challenge.attribution_hash == attribution.content_hash
            and challenge.task_hash == attribution.task_hash == spec_hash(task),
        )
        if t.get("response") is None or t.get("verdict_message") is None:
            rep.add("transcript complete (response and verdict)", False, "missing messages")
            return rep
        r_signed = SignedMessage.model_validate(t["response"])
        response = open_signed(r_signed, ResponseManifest, signer=key)
        rep.add("response answers this challenge", response.challenge_digest == c_signed.digest)
        values = array_from_npy(response.values, _blob(bundle, response.values.sha256))
        probes = array_from_npy(response.probes, _blob(bundle, response.probes.sha256))
        rep.add("response arrays match their signed hashes", True)
        v_signed = SignedMessage.model_validate(t["verdict_message"])
        verdict = open_signed(v_signed, Verdict, signer=challenge.verifier_key)
        rep.recorded = f"{verdict.verdict}:{verdict.reason}"
        rep.add(
            "verdict names this challenge and response",
            (verdict.challenge_digest, verdict.response_digest)
            == (c_signed.digest, r_signed.digest),
        )
        opened = commit_spot_checks(verdict.spot_check_indices, bytes.fromhex(verdict.salt))
        rep.add("spot-check commitment opens", opened == challenge.spot_check_commitment)
        unsigned_fields(rep, t, verdict)
    except ProtocolError as exc:
        rep.add("signatures, hashes and formats", False, str(exc))
        return rep

    design = challenge.design(task.n_train)
    values = values.astype(np.float64)
    if challenge.witness_limit is not None:  # the witness route: no spot-checks to re-train
        return _audit_witness(rep, bundle, challenge, response, task, model, design, values,
                              dict(verdict.figures))  # fmt: skip
    bad = None
    if (
        values.shape != (len(design), task.n_targets)
        or not np.all(np.isfinite(values))
        or (np.abs(values).max() > task.bound)
    ):
        bad = "values malformed or out of range"
    idx = np.array(verdict.spot_check_indices, dtype=np.int64)
    report = None
    if bad is None:
        masks = np.stack([design.masks(int(i), int(i) + 1)[0] for i in idx]) if len(idx) else \
            np.zeros((0, task.n_train), dtype=bool)  # fmt: skip
        seeds = design.seeds()[idx] if len(idx) else np.zeros(0, dtype=np.uint64)
        local_v, local_p = train_local(task, masks, seeds)
        report = check_equiv(
            values[idx], probes[idx].astype(np.float32), local_v, local_p, challenge.tau
        )
    mismatches = report.mismatches if report is not None else 0
    rep.add(
        "spot-checks re-trained here agree with the verdict's count",
        mismatches == int(verdict.figures.get("spot_mismatches", 0 if bad else -1)),
        f"{mismatches} mismatches here",
    )
    figures = dict(verdict.figures)
    if challenge.estimator == "residual":
        rep.add("decision rule", False, "the residual estimator is a baseline: not audited")
        return rep
    cert = None
    if bad is None and report is not None and report.all_match:
        try:
            cert = certify_challenge(challenge, task.bound, model, design, values, idx.tolist())
        except ProtocolError as exc:  # e.g. a clt challenge at a size clt is now refused at
            rep.add("certificate recomputed from the transcript", False, str(exc))
            rep.recomputed = "refused"
            return rep
        recorded = figures.get("certified_epsilon", math.inf)
        rep.add(
            "certificate recomputed from the transcript",
            math.isclose(cert.certified_epsilon, recorded, rel_tol=1e-9, abs_tol=1e-12),
            f"certified epsilon {cert.certified_epsilon:.6g} here, {recorded:.6g} recorded",
        )
    decision = decide(epsilon=challenge.epsilon, delta=challenge.delta, certificate=cert,
                      spot=report, bad_response=bad)  # fmt: skip
    rep.recomputed = f"{decision.verdict}:{decision.reason}"
    return rep


def _audit_witness(
    rep: AuditReport, bundle: dict[str, Any], challenge: Challenge, response: ResponseManifest,
    task: Task, model: Datamodel, design: Any, values: NDArray[np.float64],
    figures: dict[str, float],
) -> AuditReport:  # fmt: skip
    """The witness route's recomputation (verifier_client.witness): every subset's check and
    the certificate, from the bundle's witness."""
    from verifier_client import witness as route_module

    try:
        if response.witness is None:
            raise BadResponseError("the response carries no witness")
        blob = _blob(bundle, response.witness.sha256)
        theta = np.asarray(array_from_npy(response.witness, blob), dtype=np.float64)
        route = route_module.route_from_arrays(challenge, declared(task), design, theta, values,
                                               len(blob))  # fmt: skip
    except ProtocolError as exc:
        rep.add("witness readable", False, str(exc))
        return rep
    rep.add("witness rejections recomputed", len(route.rejected) == figures.get(
        "witness_rejected", -1), f"{len(route.rejected)} rejected here")  # fmt: skip
    decision = route_module.witness_decision(challenge, declared(task), model, design, route)
    if decision.certificate is not None:
        recorded = figures.get("certified_epsilon", math.inf)
        here = decision.certificate.certified_epsilon
        rep.add("certificate recomputed from the transcript",
                math.isclose(here, recorded, rel_tol=1e-9, abs_tol=1e-12),
                f"certified epsilon {here:.6g} here, {recorded:.6g} recorded")  # fmt: skip
    rep.recomputed = f"{decision.verdict}:{decision.reason}"
    return rep


_LOGGED = ("attribution", "challenge", "response", "verdict_message")


def audit_log(
    rep: AuditReport, client: ProverClient, transcript: dict[str, Any], held: list[SignedMessage]
) -> SignedMessage | None:
    """Check the transcript against the Prover's log (module doc, 7); the current signed head.

    ``held`` are earlier signed heads (from the Verifier's records); each must be signed by the
    same Prover and be a prefix of the current log. Adds one check per property to ``rep``, with
    the failing message or head named in its detail; returns None if no head could be had.
    """
    try:
        client.prover_key = client.prover_key or transcript["prover_key"]
        signed_head, head = client.log_head()
    except ProtocolError as exc:
        rep.add("log: tree head signed by the Prover", False, str(exc))
        return None
    rep.add("log: tree head signed by the Prover", True, f"size {head.size}")
    root = bytes.fromhex(head.root_hash)
    missing = []
    for name in _LOGGED:
        if not transcript.get(name):
            continue
        leaf = leaf_hash(log_entry(SignedMessage.model_validate(transcript[name])))
        try:
            doc = client.log_inclusion(leaf.hex(), head.size)
            proof = [bytes.fromhex(p) for p in doc.proof]
            verify_inclusion(leaf, doc.index, head.size, proof, root)
        except (ProtocolError, KeyError, ValueError) as exc:
            missing.append(f"{name.removesuffix('_message')}: {exc}")
    rep.add("log: every message of the transcript is included", not missing, "; ".join(missing))
    for earlier_signed in held:
        try:
            earlier = open_signed(earlier_signed, TreeHead, signer=client.prover_key)
            if earlier.size > head.size:
                raise LogProofError(f"the log shrank from {earlier.size} to {head.size} entries")
            doc = client.log_consistency(earlier.size, head.size)
            verify_consistency(earlier.size, head.size, bytes.fromhex(earlier.root_hash), root,
                               [bytes.fromhex(p) for p in doc.proof])  # fmt: skip
            rep.add(f"log: consistent with the held head of size {earlier.size}", True)
        except (ProtocolError, KeyError, ValueError) as exc:
            size = earlier_signed.payload.get("size")
            rep.add(f"log: consistent with the held head of size {size}", False, str(exc))
    return signed_head


def unsigned_fields(
    rep: AuditReport, transcript: dict[str, Any], verdict: Verdict, state: SessionOut | None = None
) -> bool:
    """Check (module doc, 7) that what the Prover shows unsigned -- the transcript's
    ``verdict``, ``status`` and ``session_id``, and the session's (``state``, if read) --
    agrees with the signed ``verdict``; the disagreements are named in the check's detail."""
    want = {"verdict": verdict.verdict, "status": "decided", "session_id": verdict.session_id}
    shown = {f"transcript.{k}": (transcript.get(k), v) for k, v in want.items()}
    if state is not None:
        shown |= {f"session.{k}": (getattr(state, k), v) for k, v in want.items()}
    bad = [f"{name} is {got!r}, signed {signed!r}" for name, (got, signed) in shown.items()
           if got != signed]  # fmt: skip
    return rep.add("unsigned fields agree with the signed verdict", not bad, "; ".join(bad))


def _signed(text: str | None) -> SignedMessage | None:
    return SignedMessage.model_validate_json(text) if text else None


def _logged(record: Record) -> list[tuple[str, SignedMessage]]:
    """The signed messages of a recorded session that its Prover's log must hold."""
    fields = (("challenge", record.challenge_json), ("response", record.response_json),
              ("verdict", record.verdict_json))  # fmt: skip
    return [(name, SignedMessage.model_validate_json(text)) for name, text in fields if text]


def audit_held(
    rep: AuditReport, client: ProverClient, head: SignedMessage, records: list[Record]
) -> None:
    """Check (module doc, 9) every recorded session of this Prover that a held head covers:
    its messages are included in the tree of ``head`` (the current one), and, when the client
    may read sessions (a key), the Prover still shows it with the verdict signed here."""
    current = open_signed(head, TreeHead, signer=client.prover_key)
    root = bytes.fromhex(current.root_hash)
    covered = [r for r in records if r.log_head_json and r.prover_session]
    missing, gone, changed = [], [], []
    for record in covered:
        sid = record.prover_session or ""
        for name, signed in _logged(record):
            leaf = leaf_hash(log_entry(signed))
            try:
                doc = client.log_inclusion(leaf.hex(), current.size)
                verify_inclusion(leaf, doc.index, current.size,
                                 [bytes.fromhex(p) for p in doc.proof], root)  # fmt: skip
            except (ProtocolError, KeyError, ValueError) as exc:
                missing.append(f"{sid} {name}: {exc}")
        if client.key is None:
            continue
        try:
            shown = client.transcript(sid)
        except ProverRefused as exc:
            gone.append(f"{sid} ({record.verdict}:{record.reason} here): {exc}")
            continue
        signed = _signed(record.verdict_json)
        held_digest = shown.verdict_message.digest if shown.verdict_message else None
        if signed is not None and held_digest != signed.digest:
            changed.append(f"{sid}: the Prover shows another verdict than the one signed here")
    n = len(covered)
    rep.add(f"log: every session a held head covers is included ({n} held)", not missing,
            "; ".join(missing))  # fmt: skip
    if client.key is not None:
        rep.add(f"the Prover still shows every session decided here ({n})", not gone and
                not changed, "; ".join(gone + changed))  # fmt: skip


def audit_session(
    client: ProverClient, session_id: str, task: Task, records: list[Record],
    prover_key: str | None = None, key: Any = None,
) -> tuple[AuditReport, dict[str, Any] | None, SignedMessage | None]:  # fmt: skip
    """The online audit of one session (module doc, 1-9) against the Verifier's ``records``:
    the report, the fetched bundle (None if the Prover no longer shows the session) and the
    log's current signed head (None if it has none). A session the records hold that the
    Prover answers 404 for is a failed check, not an error."""
    client.info()
    wanted = prover_key or client.prover_key
    rep = AuditReport()
    if prover_key is not None and client.prover_key != prover_key:
        rep.add("the Prover's key is the expected one", False,
                f"it shows {client.prover_key}")  # fmt: skip
    client.prover_key = wanted
    mine = [r for r in records if r.prover_key == wanted]
    ours = next((r for r in mine if session_id in (r.prover_session, r.id)), None)
    bundle: dict[str, Any] | None = None
    try:
        bundle = fetch_bundle(client, session_id, key)
    except ProverRefused as exc:
        if exc.status != 404 or ours is None:
            raise
        rep.add("the Prover shows the session decided here", False,
                f"{exc}; recorded here: {ours.verdict}:{ours.reason}")  # fmt: skip
    if bundle is not None:
        found = audit(bundle, task, wanted)
        rep.checks[:0], rep.recorded, rep.recomputed = (
            found.checks,
            found.recorded,
            found.recomputed,
        )
        t = bundle["transcript"]
        if ours is not None and ours.verdict_json:
            signed = SignedMessage.model_validate_json(ours.verdict_json).digest
            shown = t.get("verdict_message")
            same = shown is not None and SignedMessage.model_validate(shown).digest == signed
            rep.add("the Prover shows the verdict signed here", same,
                    "" if same else f"recorded here: {ours.verdict}:{ours.reason}")  # fmt: skip
        if client.key is not None and t.get("verdict_message"):
            verdict = open_signed(SignedMessage.model_validate(t["verdict_message"]), Verdict)
            unsigned_fields(rep, t, verdict, client.session(session_id))
    held = [SignedMessage.model_validate_json(r.log_head_json) for r in mine if r.log_head_json]
    transcript = bundle["transcript"] if bundle is not None else {"prover_key": wanted}
    head = audit_log(rep, client, transcript, held)
    if head is not None:
        audit_held(rep, client, head, mine)
    return rep, bundle, head
