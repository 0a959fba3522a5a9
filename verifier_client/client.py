"""HTTP client of a Prover (httpx): every reply parsed into its wire model, every signature and
hash checked on the way in.

Takes an ``httpx.Client`` (inject a ``MockTransport`` in tests) and, optionally, the Verifier's
key: with it every request is signed (``X-VDA-*`` headers over method, path and query, time,
nonce and body hash: :func:`protocol.signing.sign_request`), which a Prover needs before it
starts an attribution job or shows a session, its response or its arrays.

Three outcomes besides success, never mixed (the first two under :class:`VerifierError`):

- the network or the Prover's infrastructure failed (connection refused, time-out, 5xx):
  :class:`TransportError` -- retry or exit, **never** an abort;
- the Prover refused the request (4xx, its ``{code, detail}``): :class:`ProverRefused`;
- the Prover misbehaved: a :class:`protocol.errors.VerificationError` --
  :class:`~protocol.errors.MalformedResponseError` for a JSON reply that is not its
  :mod:`protocol.wire` model (not JSON, another content type, wrong types, missing or extra
  fields), :class:`~protocol.errors.BadSignatureError` for a signed message that does not
  verify, :class:`~protocol.errors.BadResponseError` for arrays and datamodels that do not match
  their signed hashes or values that are the wrong shape, not finite or outside [-b, b]. The
  session turns these into an abort verdict with the error's ``reason``, never a traceback or
  NaN figures. A redirect (3xx) is not a reply: malformed.

Every reply is read as a stream against a cap known before it arrives (:mod:`verifier_client.
limits`): an array's exact size from its signed reference (whose dtype and shape are checked
first), a datamodel's from the task's sizes, a JSON reply's the protocol's JSON limit, an error
body's a few KiB; the cap holds after decompression too. Every request has one total deadline
(``deadline_s``, by default the client's read time-out): past it, a :class:`TransportError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from pydantic import ValidationError

from protocol.datamodel import Datamodel
from protocol.errors import (
    BadResponseError,
    InvalidParameterError,
    MalformedResponseError,
    ProtocolError,
    ShapeError,
)
from protocol.messages import (
    LIMITS,
    ArrayRef,
    AttributionManifest,
    ResponseManifest,
    array_from_npy,
)
from protocol.npy import npy_max_bytes, shape_matches, shape_text
from protocol.signing import SignedMessage, open_signed, sign_request
from protocol.transcript import check_values
from protocol.transparency import TreeHead
from protocol.wire import (
    AttributionOut,
    AttributionRequest,
    ConsistencyProofOut,
    ErrorResponse,
    InclusionProofOut,
    InfoOut,
    JobOut,
    SessionCreated,
    SessionOut,
    TaskInfo,
    TranscriptOut,
    parse_reply,
)
from verifier_client.limits import ReplyTooLarge, deadline, read_capped

__all__ = ["ProverClient", "ProverRefused", "Reply", "TransportError", "VerifierError"]

T = TypeVar("T")
JSON_CAP = LIMITS["json_bytes"]  # the protocol's bound on a JSON message
ERROR_CAP = 16 * 1024  # an error body is read only to show its first 200 characters
DEFAULT_DEADLINE_S = 300.0  # a client without a read time-out still gives up


@dataclass(frozen=True)
class Reply:
    """A Prover's reply, read whole within its cap: status, headers and decoded body."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class VerifierError(Exception):
    """The root of what the Verifier's client raises about its exchange with a Prover, apart
    from the Prover's misbehaviour (a :class:`protocol.errors.VerificationError`, which the
    session turns into an abort): :class:`TransportError` (time-outs included) and
    :class:`ProverRefused`. ``except VerifierError`` catches both."""


class TransportError(VerifierError):
    """The network or the Prover's infrastructure failed: retry or exit, never an abort."""


class ProverRefused(ProtocolError, VerifierError):
    """The Prover answered a request with an error status (4xx): its code and detail.

    Neither misbehaviour nor a transport failure: the request was refused (a quota, an unknown
    name, a key the Prover does not admit). ``retry_after`` is the seconds of a 429's
    ``Retry-After``."""

    def __init__(
        self, status: int, detail: str, retry_after: float | None = None, code: str = ""
    ) -> None:
        super().__init__(f"Prover refused ({status}): {detail}")
        self.status = status
        self.code = code
        self.retry_after = retry_after


def _not_ready(resp: Reply) -> bool:
    """A 503 whose documented body says the task's start-up check is still running."""
    if resp.status_code != 503:
        return False
    try:
        return ErrorResponse.model_validate_json(resp.content).code == "task_not_ready"
    except ValidationError:
        return False


class ProverClient:
    """The Verifier's view of one Prover: one method per endpoint, each returning its
    :mod:`protocol.wire` model (module doc for the errors)."""

    READ_RETRIES = 8
    MAX_RETRY_WAIT_S = 30.0
    READY_WAIT_S = 1800.0  # the longest wait for a task's start-up check (503 task_not_ready)

    def __init__(
        self, http: httpx.Client, key: Ed25519PrivateKey | None = None,
        deadline_s: float | None = None,
    ) -> None:  # fmt: skip
        self.http = http
        self.sleep: Callable[[float], None] = time.sleep  # injectable for tests
        self.key = key
        self.prover_key: str | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.deadline_s = deadline_s or http.timeout.read or DEFAULT_DEADLINE_S
        self._sizes: dict[str, tuple[int, int]] = {}  # task hash -> (Z, N), from info()
        self.on_wait: Callable[[str], None] = lambda message: None  # says why it waits

    def _call(
        self, method: str, path: str, key: Ed25519PrivateKey | None = None, *,
        cap: int = JSON_CAP, too_large: type[Exception] = MalformedResponseError, **kwargs: Any,
    ) -> Reply:  # fmt: skip
        """Send (signed if there is a key) and read the reply within ``cap`` bytes (past it:
        ``too_large``, the Prover's misbehaviour); :class:`TransportError` on a network failure,
        a 5xx or the deadline, :class:`ProverRefused` on a 4xx. A read (GET) over the Prover's
        read rate (429) is sent again, freshly signed, after its ``Retry-After`` (at most
        :attr:`READ_RETRIES` times, each wait capped at :attr:`MAX_RETRY_WAIT_S`). Any request
        refused with 503 ``task_not_ready`` (the task's start-up check is running: nothing was
        done) is sent again after its ``Retry-After``, for at most :attr:`READY_WAIT_S` in all,
        each wait told to :attr:`on_wait`; other writes are never re-sent here."""
        waited, attempt = 0.0, 0
        while True:
            resp = self._send(method, path, key, cap, too_large, **kwargs)
            retry = resp.headers.get("retry-after", "")
            wait = min(float(retry) if retry.isdigit() else 1.0, self.MAX_RETRY_WAIT_S)
            if resp.status_code == 429 and method == "GET" and attempt < self.READ_RETRIES:
                attempt += 1
            elif _not_ready(resp) and waited < self.READY_WAIT_S:
                # refused before any work was done, so any request may be sent again
                self.on_wait(f"the Prover is still checking the task at start-up; "
                             f"asking again in {wait:g} s")  # fmt: skip
                waited += wait
            else:
                return self._checked(method, path, resp)
            self.sleep(wait)

    def _send(
        self, method: str, path: str, key: Ed25519PrivateKey | None, cap: int,
        too_large: type[Exception], **kwargs: Any,
    ) -> Reply:  # fmt: skip
        what = f"{method} {path}"
        try:
            request = self.http.build_request(method, path, **kwargs)
            signer = key or self.key
            if signer is not None:
                target = request.url.raw_path.decode("latin-1")
                request.headers.update(sign_request(signer, method, target, request.content))
            self.bytes_sent += len(request.content or b"")
            with deadline(self.deadline_s):
                resp = self.http.send(request, stream=True)
                try:
                    ok = 200 <= resp.status_code < 300
                    body = read_capped(resp, cap if ok else ERROR_CAP, what, truncate=not ok)
                finally:
                    resp.close()
        except httpx.TimeoutException as exc:
            within = f"no whole reply within the request's {self.deadline_s:g} s"
            raise TransportError(f"{what}: {within}: {type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{what}: {type(exc).__name__}: {exc}") from None
        except ReplyTooLarge as exc:
            raise too_large(str(exc)) from None
        self.bytes_received += len(body)
        return Reply(resp.status_code, resp.headers, body)

    def _checked(self, method: str, path: str, resp: Reply) -> Reply:
        if resp.status_code >= 500:
            raise TransportError(f"{method} {path}: Prover error {resp.status_code}")
        if resp.status_code < 200 or 300 <= resp.status_code < 400:  # a redirect: no reply
            where = resp.headers.get("location", "")[:200]
            to = f" to {where!r}" if where else ""
            raise MalformedResponseError(
                f"{method} {path}: a {resp.status_code} reply{to}, not the documented reply"
            )
        if resp.status_code >= 400:
            retry = resp.headers.get("retry-after", "")
            wait = float(retry) if retry.isdigit() else None
            try:
                error = ErrorResponse.model_validate_json(resp.content)
                code, detail = error.code, error.detail
            except ValidationError:  # not the documented shape: keep what a person can read
                code, detail = "", resp.text[:200]
            raise ProverRefused(resp.status_code, detail, wait, code)
        return resp

    def _parse(self, model: type[T], method: str, path: str, **kwargs: Any) -> T:
        """The JSON reply of ``method path`` as ``model`` (MalformedResponseError otherwise)."""
        resp = self._call(method, path, **kwargs)
        what = f"{method} {path}"
        kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise MalformedResponseError(f"{what}: a reply of type {kind or 'none'!r}, not JSON")
        return parse_reply(model, resp.content, what)

    def info(self) -> InfoOut:
        """``GET /v1/info``; remembers the Prover's public key (every later signature's signer)
        and each task's sizes (the cap on its datamodel's bytes)."""
        doc = self._parse(InfoOut, "GET", "/v1/info")
        self.prover_key = doc.public_key
        self._sizes.update({t.task_hash: (t.n_targets, t.n_train) for t in doc.tasks})
        return doc

    def task_entry(self, name_or_hash: str) -> TaskInfo:
        """The Prover's entry for a task (by name or spec hash); 404 ProverRefused if none."""
        for t in self.info().tasks:
            if name_or_hash in (t.name, t.task_hash):
                return t
        raise ProverRefused(404, f"the Prover does not serve task {name_or_hash!r}")

    def request_attribution(self, task_hash: str, method: str, budget: int) -> JobOut:
        """Ask for an attribution (a signed request); its job."""
        try:
            body = AttributionRequest(task_hash=task_hash, method=method, budget=budget)
        except ValidationError as exc:  # the caller's values, refused before any traffic
            first = exc.errors()[0]
            raise InvalidParameterError(f"attribution request: {first['loc'][0]}: "
                                        f"{first['msg']}") from None  # fmt: skip
        return self._parse(JobOut, "POST", "/v1/attributions", json=body.model_dump())

    def job(self, job_id: str) -> JobOut:
        """A job's status and progress."""
        return self._parse(JobOut, "GET", f"/v1/jobs/{job_id}")

    def latest_attribution(self, task_hash: str) -> str | None:
        """The content hash of the task's latest attribution, None if it has none yet."""
        try:
            out = self._parse(AttributionOut, "GET", "/v1/attributions", params={"task": task_hash})
        except ProverRefused as exc:
            if exc.status == 404:
                return None
            raise
        return out.content_hash

    def attribution(self, content_hash: str) -> tuple[SignedMessage, Datamodel]:
        """The signed manifest and the datamodel, both checked against each other."""
        doc = self._parse(AttributionOut, "GET", f"/v1/attributions/{content_hash}")
        manifest = open_signed(doc.manifest, AttributionManifest, signer=self.prover_key)
        raw = self.datamodel_bytes(content_hash, manifest.task_hash)
        try:
            model = Datamodel.from_bytes(raw)
        except ShapeError as exc:
            raise BadResponseError(f"the datamodel does not parse: {exc}") from None
        if model.content_hash != manifest.content_hash or manifest.content_hash != content_hash:
            raise BadResponseError("the datamodel's bytes do not match its signed content hash")
        return doc.manifest, model

    def post_challenge(self, challenge: SignedMessage) -> SessionCreated:
        """Send a signed challenge; the session it opened."""
        return self._parse(SessionCreated, "POST", "/v1/challenges", json=challenge.model_dump())

    def session(self, session_id: str) -> SessionOut:
        """A session's state and its job's progress."""
        return self._parse(SessionOut, "GET", f"/v1/sessions/{session_id}")

    def response(self, session_id: str) -> tuple[SignedMessage, ResponseManifest]:
        """The session's signed response, verified against the Prover's key."""
        signed = self._parse(SignedMessage, "GET", f"/v1/sessions/{session_id}/response")
        return signed, open_signed(signed, ResponseManifest, signer=self.prover_key)

    def datamodel_bytes(self, content_hash: str, task_hash: str) -> bytes:
        """A datamodel's bytes, read within the size of one for the task's Z and N (from
        :meth:`info`; the protocol's array limit for a task it did not list)."""
        z, n = self._sizes.get(task_hash, (0, 0))
        cap = 64 + 8 * z * (n + 1) if z else LIMITS["array_bytes"]
        path = f"/v1/attributions/{content_hash}/datamodel"
        return self._call("GET", path, cap=cap, too_large=BadResponseError).content

    def response_to_sign(self, session_id: str, challenge_digest: str) -> SignedMessage | None:
        """The session's signed response as the transcript holds it, for an abort decided
        without one (a reply that was HTML, a redirect, not its model): the verdict is signed
        over the response the Prover signed, so the Prover can record it. None if the Prover
        shows none that verifies and answers ``challenge_digest`` (nothing to sign over)."""
        try:
            signed = self.transcript(session_id).response
            if signed is None:
                return None
            manifest = open_signed(signed, ResponseManifest, signer=self.prover_key)
        except (ProtocolError, TransportError):
            return None
        return signed if manifest.challenge_digest == challenge_digest else None

    def array_bytes(self, ref: ArrayRef) -> bytes:
        """The ``.npy`` bytes of ``ref``, read within the size its dtype and shape announce."""
        cap = min(npy_max_bytes(ref.dtype, ref.shape), LIMITS["array_bytes"])
        path = f"/v1/arrays/{ref.sha256}"
        return self._call("GET", path, cap=cap, too_large=BadResponseError).content

    def array(
        self, ref: ArrayRef, shape: Sequence[int | None] | None = None
    ) -> NDArray[np.generic]:
        """The array bound by ``ref``; :class:`BadResponseError` unless its signed shape is
        ``shape`` (``None`` entries: any size; checked before anything is downloaded), its bytes
        hash to it and their ``.npy`` header announces that dtype and shape (checked before
        anything is allocated)."""
        if shape is not None and not shape_matches(ref.shape, shape):
            raise BadResponseError(f"array {ref.name!r} of signed shape {ref.shape}, "
                                   f"expected {shape_text(shape)}")  # fmt: skip
        if npy_max_bytes(ref.dtype, ref.shape) > LIMITS["array_bytes"]:
            raise BadResponseError(f"array {ref.name!r} of shape {ref.shape} is larger than "
                                   f"the protocol's {LIMITS['array_bytes']:,} bytes")  # fmt: skip
        data = self.array_bytes(ref)
        try:
            return array_from_npy(ref, data)
        except ShapeError as exc:
            raise BadResponseError(str(exc)) from None

    def values(self, ref: ArrayRef, shape: tuple[int, ...], bound: float) -> NDArray[np.float64]:
        """A response's values, shape ``shape``, float64, each finite and in [-bound, bound].

        Anything else is the Prover's misbehaviour: :class:`BadResponseError` with the reason, so
        the session aborts with a signable verdict instead of carrying NaN into its figures.
        """
        return check_values(self.array(ref, shape), shape, bound)  # the audit's range check

    def post_verdict(self, session_id: str, verdict: SignedMessage) -> SessionOut:
        """Post the signed verdict; the session as the Prover now holds it."""
        path = f"/v1/sessions/{session_id}/verdict"
        return self._parse(SessionOut, "POST", path, json=verdict.model_dump())

    def cancel(self, job_id: str) -> JobOut:
        """Cancel one of this key's unfinished jobs."""
        return self._parse(JobOut, "POST", f"/v1/jobs/{job_id}/cancel")

    def resume_job(self, job_id: str) -> JobOut:
        """Queue one of this key's cancelled jobs again (it trains from its first chunk)."""
        return self._parse(JobOut, "POST", f"/v1/jobs/{job_id}/resume")

    def _adopt(self, key: Ed25519PrivateKey | None) -> None:
        """A key given for one read signs the later ones too (an audit's array downloads)."""
        if key is not None and self.key is None:
            self.key = key

    def sessions(self, key: Ed25519PrivateKey | None = None) -> list[SessionOut]:
        """The sessions the Prover shows this key (its own, or all if public)."""
        self._adopt(key)
        return self._parse(list[SessionOut], "GET", "/v1/sessions")

    def transcript(self, session_id: str, key: Ed25519PrivateKey | None = None) -> TranscriptOut:
        """A session's transcript, read as ``key`` (or the client's key)."""
        self._adopt(key)
        return self._parse(TranscriptOut, "GET", f"/v1/sessions/{session_id}/transcript")

    # -- the transparency log (public reads) ------------------------------------------------
    def log_head(self) -> tuple[SignedMessage, TreeHead]:
        """The log's signed tree head, verified against the Prover's key (``info`` first)."""
        signed = self._parse(SignedMessage, "GET", "/v1/log/head")
        return signed, open_signed(signed, TreeHead, signer=self.prover_key)

    def log_inclusion(self, leaf_hex: str, size: int) -> InclusionProofOut:
        """The inclusion proof of a leaf in the tree of ``size`` entries."""
        params = {"leaf": leaf_hex, "size": size}
        return self._parse(InclusionProofOut, "GET", "/v1/log/inclusion", params=params)

    def log_consistency(self, first: int, second: int) -> ConsistencyProofOut:
        """The consistency proof between two tree sizes."""
        params = {"first": first, "second": second}
        return self._parse(ConsistencyProofOut, "GET", "/v1/log/consistency", params=params)
