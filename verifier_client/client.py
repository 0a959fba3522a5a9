"""HTTP client of a Prover (httpx), checking every signature and hash on the way in.

Takes an ``httpx.Client`` (inject a ``MockTransport`` in tests). Infrastructure failures
(connection refused, timeouts, 5xx) raise :class:`TransportError`; a Prover that answers with
something that does not verify raises :class:`protocol.signing.BadSignatureError` or
:class:`protocol.errors.ShapeError` -- misbehaviour, which the session turns into an abort.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from protocol.datamodel import Datamodel
from protocol.errors import ProtocolError, ShapeError
from protocol.messages import ArrayRef, AttributionManifest, ResponseManifest, array_from_npy
from protocol.signing import SignedMessage, open_signed, public_key_hex, request_bytes, sign_bytes

__all__ = ["ProverClient", "ProverRefused", "TransportError"]


class TransportError(Exception):
    """The network or the Prover's infrastructure failed: retry or exit, never an abort."""


class ProverRefused(ProtocolError):
    """The Prover answered a request with an error status (4xx): its code and detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Prover refused ({status}): {detail}")
        self.status = status


class ProverClient:
    """The Verifier's view of one Prover."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.prover_key: str | None = None
        self.bytes_received = 0
        self.bytes_sent = 0

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        self.bytes_received += len(resp.content)
        self.bytes_sent += len(resp.request.content or b"")
        if resp.status_code >= 500:
            raise TransportError(f"{method} {path}: Prover error {resp.status_code}")
        if resp.status_code >= 400:
            try:
                detail = str(resp.json().get("detail", resp.text))
            except ValueError:
                detail = resp.text[:200]
            raise ProverRefused(resp.status_code, detail)
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
        signed = SignedMessage.model_validate(
            self._json("GET", f"/v1/sessions/{session_id}/response")
        )
        return signed, open_signed(signed, ResponseManifest, signer=self.prover_key)

    def array(self, ref: ArrayRef) -> NDArray[np.generic]:
        return array_from_npy(ref, self._call("GET", f"/v1/arrays/{ref.sha256}").content)

    def post_verdict(self, session_id: str, verdict: SignedMessage) -> dict[str, Any]:
        return self._json("POST", f"/v1/sessions/{session_id}/verdict", json=verdict.model_dump())  # type: ignore[no-any-return]

    @staticmethod
    def _signed_headers(key: Ed25519PrivateKey | None, path: str) -> dict[str, str]:
        if key is None:
            return {}
        ts = int(time.time())
        return {
            "X-VDA-Key": public_key_hex(key),
            "X-VDA-Timestamp": str(ts),
            "X-VDA-Signature": sign_bytes(key, request_bytes("GET", path, ts)),
        }

    def sessions(self, key: Ed25519PrivateKey | None) -> list[dict[str, Any]]:
        """The sessions the Prover shows this key (its own, or all if public)."""
        path = "/v1/sessions"
        return self._json("GET", path, headers=self._signed_headers(key, path))  # type: ignore[no-any-return]

    def transcript(self, session_id: str, key: Ed25519PrivateKey | None) -> dict[str, Any]:
        path = f"/v1/sessions/{session_id}/transcript"
        return self._json("GET", path, headers=self._signed_headers(key, path))  # type: ignore[no-any-return]
