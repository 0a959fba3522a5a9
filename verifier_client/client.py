"""HTTP client of a Prover (httpx), checking every signature and hash on the way in.

Takes an ``httpx.Client`` (inject a ``MockTransport`` in tests) and, optionally, the Verifier's
key: with it every request is signed (``X-VDA-*`` headers over method, path and query, time,
nonce and body hash: :func:`protocol.signing.sign_request`), which a Prover needs before it
starts an attribution job or shows a session, its response or its arrays.

Infrastructure failures (connection refused, timeouts, 5xx) raise :class:`TransportError`; a
Prover that answers with something that does not verify or does not parse raises
:class:`protocol.signing.BadSignatureError` or :class:`protocol.errors.ShapeError` (a bad array
included: wrong hash, not finite, outside [-b, b]) -- misbehaviour, which the session turns into an
abort, never a traceback or NaN figures.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from pydantic import ValidationError

from protocol.datamodel import Datamodel
from protocol.errors import ProtocolError, ShapeError
from protocol.messages import ArrayRef, AttributionManifest, ResponseManifest, array_from_npy
from protocol.signing import SignedMessage, open_signed, sign_request
from protocol.transparency import TreeHead

__all__ = ["ProverClient", "ProverRefused", "TransportError"]


class TransportError(Exception):
    """The network or the Prover's infrastructure failed: retry or exit, never an abort."""


class ProverRefused(ProtocolError):
    """The Prover answered a request with an error status (4xx): its code and detail."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"Prover refused ({status}): {detail}")
        self.status = status
        self.retry_after = retry_after  # seconds, from Retry-After on a 429


class ProverClient:
    """The Verifier's view of one Prover."""

    def __init__(self, http: httpx.Client, key: Ed25519PrivateKey | None = None) -> None:
        self.http = http
        self.key = key
        self.prover_key: str | None = None
        self.bytes_received = 0
        self.bytes_sent = 0

    def _call(
        self, method: str, path: str, key: Ed25519PrivateKey | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            request = self.http.build_request(method, path, **kwargs)
            signer = key or self.key
            if signer is not None:
                target = request.url.raw_path.decode("latin-1")
                request.headers.update(sign_request(signer, method, target, request.content))
            resp = self.http.send(request)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        self.bytes_received += len(resp.content)
        self.bytes_sent += len(resp.request.content or b"")
        if resp.status_code >= 500:
            raise TransportError(f"{method} {path}: Prover error {resp.status_code}")
        if resp.status_code >= 400:
            try:
                detail = str(resp.json().get("detail", resp.text))
            except (ValueError, AttributeError):
                detail = resp.text[:200]
            retry = resp.headers.get("retry-after")
            wait = float(retry) if retry and retry.isdigit() else None
            raise ProverRefused(resp.status_code, detail, wait)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._call(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise ShapeError(f"{method} {path}: the Prover's answer is not JSON") from None

    def info(self) -> dict[str, Any]:
        doc = self._json("GET", "/v1/info")
        self.prover_key = str(doc["public_key"])
        return doc  # type: ignore[no-any-return]

    def task_entry(self, name_or_hash: str) -> dict[str, Any]:
        for t in self.info()["tasks"]:
            if name_or_hash in (t["name"], t["task_hash"]):
                return t  # type: ignore[no-any-return]
        raise ProverRefused(404, f"the Prover does not serve task {name_or_hash!r}")

    def request_attribution(self, task_hash: str, method: str, budget: int) -> dict[str, Any]:
        body = {"task_hash": task_hash, "method": method, "budget": budget}
        return self._json("POST", "/v1/attributions", json=body)  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def latest_attribution(self, task_hash: str) -> str | None:
        try:
            return str(
                self._json("GET", "/v1/attributions", params={"task": task_hash})["content_hash"]
            )
        except ProverRefused as exc:
            if exc.status == 404:
                return None
            raise

    def attribution(self, content_hash: str) -> tuple[SignedMessage, Datamodel]:
        """The signed manifest and the datamodel, both checked against each other."""
        doc = self._json("GET", f"/v1/attributions/{content_hash}")
        signed = SignedMessage.model_validate(doc["manifest"])
        manifest = open_signed(signed, AttributionManifest, signer=self.prover_key)
        raw = self._call("GET", f"/v1/attributions/{content_hash}/datamodel").content
        model = Datamodel.from_bytes(raw)
        if model.content_hash != manifest.content_hash or manifest.content_hash != content_hash:
            raise ShapeError("the datamodel's bytes do not match its signed content hash")
        return signed, model

    def post_challenge(self, challenge: SignedMessage) -> dict[str, Any]:
        return self._json("POST", "/v1/challenges", json=challenge.model_dump())  # type: ignore[no-any-return]

    def session(self, session_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/sessions/{session_id}")  # type: ignore[no-any-return]

    def response(self, session_id: str) -> tuple[SignedMessage, ResponseManifest]:
        doc = self._json("GET", f"/v1/sessions/{session_id}/response")
        try:
            signed = SignedMessage.model_validate(doc)
        except ValidationError:
            raise ShapeError("the Prover's response is not a signed message") from None
        return signed, open_signed(signed, ResponseManifest, signer=self.prover_key)

    def array(self, ref: ArrayRef) -> NDArray[np.generic]:
        """The array bound by ``ref``; :class:`ShapeError` unless its bytes hash to it."""
        return array_from_npy(ref, self._call("GET", f"/v1/arrays/{ref.sha256}").content)

    def values(self, ref: ArrayRef, shape: tuple[int, ...], bound: float) -> NDArray[np.float64]:
        """A response's values, shape ``shape``, float64, each finite and in [-bound, bound].

        Anything else is the Prover's misbehaviour: :class:`ShapeError` with the reason, so the
        session aborts with a signable verdict instead of carrying NaN into its figures.
        """
        values = np.asarray(self.array(ref), dtype=np.float64)
        if values.shape != shape:
            raise ShapeError(f"values of shape {values.shape}, expected {shape}")
        finite = np.isfinite(values)
        if not finite.all():
            raise ShapeError(f"{int((~finite).sum())} values are NaN or infinite")
        if values.size and float(np.abs(values).max()) > bound:
            raise ShapeError(f"values lie outside [-{bound:g}, {bound:g}]")
        return values

    def post_verdict(self, session_id: str, verdict: SignedMessage) -> dict[str, Any]:
        return self._json("POST", f"/v1/sessions/{session_id}/verdict", json=verdict.model_dump())  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel one of this key's unfinished jobs."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def _adopt(self, key: Ed25519PrivateKey | None) -> None:
        """A key given for one read signs the later ones too (an audit's array downloads)."""
        if key is not None and self.key is None:
            self.key = key

    def sessions(self, key: Ed25519PrivateKey | None = None) -> list[dict[str, Any]]:
        """The sessions the Prover shows this key (its own, or all if public)."""
        self._adopt(key)
        return self._json("GET", "/v1/sessions")  # type: ignore[no-any-return]

    def transcript(self, session_id: str, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """A session's transcript, read as ``key`` (or the client's key)."""
        self._adopt(key)
        return self._json("GET", f"/v1/sessions/{session_id}/transcript")  # type: ignore[no-any-return]

    # -- the transparency log (public reads) ------------------------------------------------
    def log_head(self) -> tuple[SignedMessage, TreeHead]:
        """The log's signed tree head, verified against the Prover's key (``info`` first)."""
        doc = self._json("GET", "/v1/log/head")
        try:
            signed = SignedMessage.model_validate(doc)
        except ValidationError:
            raise ShapeError("the Prover's tree head is not a signed message") from None
        return signed, open_signed(signed, TreeHead, signer=self.prover_key)

    def log_inclusion(self, leaf_hex: str, size: int) -> dict[str, Any]:
        """``{index, size, leaf_hash, root_hash, proof}`` for a leaf in the tree of ``size``."""
        return self._json("GET", "/v1/log/inclusion", params={"leaf": leaf_hex, "size": size})  # type: ignore[no-any-return]

    def log_consistency(self, first: int, second: int) -> dict[str, Any]:
        """``{first, second, first_root, second_root, proof}`` between two tree sizes."""
        return self._json("GET", "/v1/log/consistency", params={"first": first, "second": second})  # type: ignore[no-any-return]
