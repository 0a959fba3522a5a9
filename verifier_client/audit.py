"""Third-party audit of a transcript: every signature, every hash, the commitment, and the
decision recomputed from what the transcript holds.

Anyone with the transcript (``GET /v1/sessions/{id}/transcript`` plus the arrays it names) and
the task can run it; no private key is needed. Checks 1-6 are
:func:`protocol.transcript.audit_transcript`, the one pure audit the Prover's ``/audit`` page
runs too (:func:`audit` hands it a bundle); this module fetches the bundle and adds the online
checks (7-9). In order:

1. the attribution manifest is signed by the Prover, and the datamodel bytes hash to it;
2. the challenge is signed by the key it names and names that attribution and task;
3. the response is signed by the Prover, answers that challenge, and its arrays hash to it;
4. the verdict is signed by the challenge's verifier, names that challenge and response, and
   opens the spot-check commitment;
5. the response's values are in range, and the opened spot-checks, re-trained here, compare
   with the response as the verdict says (the same rows and range check as the session's);
6. the certificate (:func:`protocol.decision.certify_challenge`, the same call the session
   made) is recomputed from the response and the opened spot-checks, and the decision
   (:func:`protocol.decision.decide`) reproduces the recorded verdict and reason.

7. every unsigned field the Prover shows beside the signed verdict (the transcript's, and
   online the session's, ``verdict`` and ``status``, its ``session_id``) agrees with it: a
   Prover that flips an abort to accept in its database, where its listings read it, is
   caught;
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
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protocol.errors import InvalidParameterError, ProtocolError, ShapeError
from protocol.messages import ArrayRef, Verdict
from protocol.signing import SignedMessage, open_signed
from protocol.tasks import Task
from protocol.transcript import (
    AuditReport,
    Transcript,
    audit_transcript,
    shown_fields,
    unsigned_fields,
)
from protocol.transparency import (
    LogProofError,
    TreeHead,
    leaf_hash,
    log_entry,
    verify_consistency,
    verify_inclusion,
)
from verifier_client.client import ProverClient, ProverRefused
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
]


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
        bundle: dict[str, Any] = json.loads(path.read_text())
        return bundle
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"cannot read transcript file {str(path)!r}: {exc}") from None


class BundleArrays:
    """A bundle's blobs (base64 text by SHA-256) as a :class:`protocol.transcript.ArraySource`:
    KeyError for a blob it lacks, :class:`ShapeError` for one that is not base64."""

    def __init__(self, blobs: dict[str, str]) -> None:
        self.blobs = blobs

    def __getitem__(self, sha256: str, /) -> bytes:
        text = self.blobs[sha256]
        try:
            return base64.b64decode(text)
        except (binascii.Error, TypeError, ValueError):
            raise ShapeError(f"blob {sha256[:16]}... is not base64") from None


def audit(bundle: dict[str, Any], task: Task, prover_key: str | None = None) -> AuditReport:
    """Run every offline check (module doc, 1-7) on a transcript bundle: the transcript's
    model parsed, then :func:`protocol.transcript.audit_transcript` on it and its blobs."""
    try:
        transcript = Transcript.model_validate(bundle["transcript"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "transcript"
        rep = AuditReport()
        rep.add("signatures, hashes and formats", False,
                f"the transcript is malformed: {where}: {first['msg']}")  # fmt: skip
        return rep
    return audit_transcript(transcript, BundleArrays(bundle["blobs"]), task, prover_key)


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
            consistency = client.log_consistency(earlier.size, head.size)
            verify_consistency(earlier.size, head.size, bytes.fromhex(earlier.root_hash), root,
                               [bytes.fromhex(p) for p in consistency.proof])  # fmt: skip
            rep.add(f"log: consistent with the held head of size {earlier.size}", True)
        except (ProtocolError, KeyError, ValueError) as exc:
            size = earlier_signed.payload.get("size")
            rep.add(f"log: consistent with the held head of size {size}", False, str(exc))
    return signed_head


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
        ours = _signed(record.verdict_json)
        held_digest = shown.verdict_message.digest if shown.verdict_message else None
        if ours is not None and held_digest != ours.digest:
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
    if ours is not None and ours.prover_session is None and ours.protocol == "noninteractive":
        raise InvalidParameterError(
            f"session {ours.id} was checked alone (route noninteractive): this machine trained "
            "every subset itself, so the Prover holds no transcript of it to audit; `show "
            f"{ours.id[:12]}` has its record and certificate (verify --protocol interactive "
            "makes a session a third party can audit)"
        )
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
            shown = {"transcript": {k: t.get(k) for k in ("verdict", "status", "session_id")},
                     "session": shown_fields(client.session(session_id))}  # fmt: skip
            unsigned_fields(rep, shown, verdict)
    held = [SignedMessage.model_validate_json(r.log_head_json) for r in mine if r.log_head_json]
    transcript = bundle["transcript"] if bundle is not None else {"prover_key": wanted}
    head = audit_log(rep, client, transcript, held)
    if head is not None:
        audit_held(rep, client, head, mine)
    return rep, bundle, head
