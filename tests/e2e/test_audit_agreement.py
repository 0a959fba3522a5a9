"""``vda-verifier audit`` and the Prover's ``/audit`` page give the same report on the same
transcript, tampered or not (issue 22, item 1): both run
:func:`protocol.transcript.audit_transcript`.

One honest session is decided on a real Prover on loopback. Each case then tampers with its
transcript bundle (the transcript and its arrays, as ``audit --save`` writes them) and writes the
same tampered transcript into the Prover's database and array store: the CLI audits the file
(``audit --file``), the page audits the row (:func:`prover_service.audit_page.audit_session`),
and the two reports (every check, its outcome and detail, the recorded and the recomputed
decision) must be equal. Where a case needs a message that still verifies, the test re-signs it
with the key that signed it (the Prover's or the Verifier's: a party lying about its own
transcript). Before these tests, the two disagreed on an out-of-range value (the page did not
check the range) and on a verdict that omits ``spot_mismatches``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import update
from typer.testing import CliRunner

from protocol.messages import ResponseManifest, Verdict, array_to_npy
from protocol.signing import generate_key, save_private_key, sign_message
from protocol.tasks import load_task
from prover_service.app import create_app
from prover_service.audit_page import audit_session
from prover_service.service import ProverService
from prover_service.tables import SessionRow
from tests.prover_service.conftest import TASK, make_settings
from tests.serving import serve
from verifier_client.api import verify
from verifier_client.audit import fetch_bundle
from verifier_client.cli import app
from verifier_client.client import ProverClient

Bundle = dict[str, Any]


@dataclass
class Decided:
    service: ProverService
    verifier_key: Any
    session: str
    bundle: Bundle  # as fetched from the Prover, untouched
    folder: Path


@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decided]:
    root = tmp_path_factory.mktemp("agreement")
    key = generate_key()
    save_private_key(key, root / "verifier.key")
    (root / "p").mkdir()
    application = create_app(make_settings(root / "p", run_worker=True, public_transcripts=True))
    with serve(application) as url:
        result = verify(url, TASK, 0.6, key=key, db=f"sqlite:///{root}/v.db", budget=400,
                        max_prover_trainings=20_000, poll_s=0.02, seed=41,
                        protocol="interactive")  # fmt: skip
        assert (result["verdict"], result["reason"]) == ("accept", "certified"), result
        with httpx.Client(base_url=url, timeout=60) as http:
            bundle = fetch_bundle(ProverClient(http, key=key), str(result["session"]), key)
    yield Decided(application.state.service, key, str(result["session"]), bundle, root)
    application.state.service.engine.dispose()


# -- tampering with a bundle -----------------------------------------------------------------


def _copy(bundle: Bundle) -> Bundle:
    return json.loads(json.dumps(bundle))  # type: ignore[no-any-return]


def _payload(bundle: Bundle, name: str) -> dict[str, Any]:
    return bundle["transcript"][name]["payload"]  # type: ignore[no-any-return]


def _values(bundle: Bundle) -> NDArray[np.float64]:
    sha = _payload(bundle, "response")["values"]["sha256"]
    return np.asarray(np.load(io.BytesIO(base64.b64decode(bundle["blobs"][sha]))))


def _resign_response(d: Decided, bundle: Bundle, values: NDArray[np.float64]) -> None:
    """New values, bound into a response the Prover signs again; the verdict, re-signed by the
    Verifier with its figures unchanged, names the new response (a collusion, or a Verifier
    that signed without checking: the audit must recompute, not trust)."""
    ref, data = array_to_npy("values", values)
    bundle["blobs"][ref.sha256] = base64.b64encode(data).decode()
    manifest = ResponseManifest.model_validate(_payload(bundle, "response") | {"values": ref})
    response = sign_message(d.service.key, manifest)
    bundle["transcript"]["response"] = response.model_dump(mode="json")
    _resign_verdict(d, bundle, response_digest=response.digest)


def _resign_verdict(d: Decided, bundle: Bundle, **fields: Any) -> None:
    verdict = Verdict.model_validate(_payload(bundle, "verdict_message") | fields)
    bundle["transcript"]["verdict_message"] = sign_message(d.verifier_key, verdict).model_dump(
        mode="json"
    )


def changed_value(d: Decided, b: Bundle) -> None:
    """One value changed in the stored bytes: they no longer hash to the signed SHA-256."""
    sha = _payload(b, "response")["values"]["sha256"]
    data = bytearray(base64.b64decode(b["blobs"][sha]))
    data[-1] ^= 1
    b["blobs"][sha] = base64.b64encode(bytes(data)).decode()


def bad_signature(d: Decided, b: Bundle) -> None:
    """The response's signature with one hex digit changed."""
    sig = b["transcript"]["response"]["signature"]
    b["transcript"]["response"]["signature"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")


def wrong_spot_check_row(d: Decided, b: Bundle) -> None:
    """An opened spot-check's row moved off what training gives, both messages re-signed."""
    values = _values(b).copy()
    row = _payload(b, "verdict_message")["spot_check_indices"][0]
    shift = 0.3 * load_task(TASK).bound  # far beyond CHECKEQUIV's tau, still within [-b, b]
    values[row] = np.where(values[row] > 0, values[row] - shift, values[row] + shift)
    _resign_response(d, b, values)


def out_of_range_value(d: Decided, b: Bundle) -> None:
    """A value (not a spot-check's) outside [-b, b], both messages re-signed."""
    values = _values(b).copy()
    opened = set(_payload(b, "verdict_message")["spot_check_indices"])
    row = next(i for i in range(len(values)) if i not in opened)
    values[row, 0] = 10.0 * load_task(TASK).bound
    _resign_response(d, b, values)


def changed_verdict(d: Decided, b: Bundle) -> None:
    """The Verifier's verdict turned to abort and signed again (its unsigned copy, the
    transcript's ``verdict`` column, still says accept)."""
    _resign_verdict(d, b, verdict="abort", reason="not_certified")


def missing_spot_mismatches(d: Decided, b: Bundle) -> None:
    """A signed verdict without its ``spot_mismatches`` figure: the session always writes it
    once the values are in range, so its absence fails (the page defaulted it to 0)."""
    figures = dict(_payload(b, "verdict_message")["figures"])
    figures.pop("spot_mismatches")
    _resign_verdict(d, b, figures=figures)


def missing_array(d: Decided, b: Bundle) -> None:
    """The probes array is gone (from the bundle, and from the Prover's store)."""
    del b["blobs"][_payload(b, "response")["probes"]["sha256"]]


def untouched(d: Decided, b: Bundle) -> None:
    """The honest transcript."""


# -- the two audits --------------------------------------------------------------------------


def _install(d: Decided, bundle: Bundle) -> SessionRow:
    """Write ``bundle`` into the Prover: the session row's messages, and exactly its arrays in
    the store (bytes as given, under the names given)."""
    t = bundle["transcript"]
    svc = d.service
    root = svc.arrays.root
    named = {sha for b in (d.bundle, bundle) for sha in b["blobs"]}
    for sha in named:
        path = Path(root) / sha[:2] / sha
        if sha in bundle["blobs"]:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(base64.b64decode(bundle["blobs"][sha]))
        else:
            path.unlink(missing_ok=True)
    with svc.db.begin() as s:
        s.execute(update(SessionRow).where(SessionRow.id == d.session).values(
            challenge_json=json.dumps(t["challenge"]), response_json=json.dumps(t["response"]),
            verdict_json=json.dumps(t["verdict_message"]), status=t["status"],
            verdict=t["verdict"],
        ))  # fmt: skip
    return svc.sessions.read(d.session, None)


def _cli(d: Decided, bundle: Bundle) -> dict[str, Any]:
    path = d.folder / "bundle.json"
    path.write_text(json.dumps(bundle))
    out = CliRunner().invoke(app, ["audit", "--file", str(path), "--task", TASK, "--json"])
    report: dict[str, Any] = json.loads(out.stdout)
    assert out.exit_code == (0 if report["ok"] else 1), out.output
    del report["not_checked"]  # the log, checked online only (the page checks its own)
    return report


CASES: dict[str, tuple[Callable[[Decided, Bundle], None], str | None]] = {
    # case: (tamper, the first check that fails; None: every check passes)
    "untouched": (untouched, None),
    "changed value": (changed_value, "signatures, hashes and formats"),
    "bad signature": (bad_signature, "signatures, hashes and formats"),
    "wrong spot-check row": (wrong_spot_check_row,
                             "spot-checks re-trained here agree with the verdict's count"),
    "out-of-range value": (out_of_range_value, "decision reproduces the recorded verdict"),
    "changed verdict": (changed_verdict, "unsigned fields agree with the signed verdict"),
    "missing spot_mismatches": (missing_spot_mismatches,
                                "spot-checks re-trained here agree with the verdict's count"),
    "missing array": (missing_array, "signatures, hashes and formats"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_cli_and_the_page_give_the_same_report(decided: Decided, case: str) -> None:
    tamper, first_failure = CASES[case]
    bundle = _copy(decided.bundle)
    tamper(decided, bundle)
    try:
        row = _install(decided, bundle)
        page = audit_session(decided.service, row)
        cli = _cli(decided, bundle)
    finally:
        _install(decided, decided.bundle)
    assert page.report.as_dict() == cli
    failed = [c["check"] for c in cli["checks"] if not c["ok"]]
    if first_failure is None:
        assert cli["ok"] and page.ok and failed == [], cli
        assert page.certificate is not None and page.stability is not None
    else:
        assert not cli["ok"] and not page.ok, cli
        assert failed and failed[0] == first_failure, cli
    # the page's own row, the log: it fails exactly when a logged message was replaced
    logged = ("attribution", "challenge", "response", "verdict_message")
    altered = any(bundle["transcript"][n] != decided.bundle["transcript"][n] for n in logged)
    assert [(c["check"], c["ok"]) for c in page.extra] == [
        ("every message is in the transparency log", not altered)
    ], page.extra


def test_an_out_of_range_value_is_the_sessions_abort(decided: Decided) -> None:
    """The range check is the session's: the recomputed decision is its abort."""
    bundle = _copy(decided.bundle)
    out_of_range_value(decided, bundle)
    cli = _cli(decided, bundle)
    assert (cli["recorded"], cli["recomputed"]) == ("accept:certified", "abort:bad_response")
    bundle = _copy(decided.bundle)
    wrong_spot_check_row(decided, bundle)
    cli = _cli(decided, bundle)
    assert cli["recomputed"] == "abort:spot_check_mismatch"
