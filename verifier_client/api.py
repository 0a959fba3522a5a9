"""The Verifier as a Python call: :func:`verify`, the same run as ``vda-verifier verify``.

::

    from verifier_client import verify

    result = verify("http://127.0.0.1:8000", "digits-logreg", 0.25, key="verifier.key")
    result["verdict"], result["certified_epsilon"]  # "accept", 0.11

The command line calls this function too, so the two give the same certificate and verdict
for the same options and seed (``tests/verifier_client/test_api.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import InvalidParameterError
from protocol.sampling import seed_from_text
from protocol.signing import load_private_key
from verifier_client.client import ProverClient
from verifier_client.limits import prover_http
from verifier_client.run import Notify, Options, Progress, run_verification
from verifier_client.store import VerifierStore

__all__ = ["parse_epsilon", "verify"]


def parse_epsilon(text: str | float) -> tuple[float, bool]:
    """``0.5`` (absolute units of err) or ``"5%"`` (a fraction of Var f): (value, relative)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text), False
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1]) / 100.0 if relative else float(raw)
    except ValueError:
        raise InvalidParameterError(
            f"--epsilon must be a number or a percentage; got {text!r}"
        ) from None
    return value, relative


def _seed(seed: str | int | bytes | None) -> bytes | None:
    if seed is None or isinstance(seed, bytes):
        return seed
    return seed_from_text(str(seed))


def verify(
    prover: str,
    task: str,
    epsilon: float | str | None,
    *,
    key: Path | str | Ed25519PrivateKey,
    db: str = "sqlite:///verifier.db",
    seed: str | int | bytes | None = None,
    resume: str | None = None,
    progress: Progress | None = None,
    notify: Notify | None = None,
    timeout_s: float = 120.0,
    transport: httpx.BaseTransport | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Verify the attribution of the Prover at ``prover`` for ``task``; the recorded result.

    ``epsilon`` is absolute (``0.25``) or a share of Var f (``"5%"``); ``key`` the Verifier's
    signing key (a PEM file or the key); ``db`` where the record goes (``history``/``show``
    read it); ``seed`` fixes the design (the pilot, the challenge's subsets and training seeds:
    repeatable figures), never a secret: the nonce, salt and spot-checks are always random.
    ``options`` are :class:`~verifier_client.run.Options` fields: ``delta``, ``aggregate``,
    ``pairs_per_level``, ``spot_checks``, ``method``, ``budget``, ``attribution``, ...
    With ``epsilon=None`` and ``reach_trainings=N`` it only plans: no challenge is sent, and the
    result (``plan_only``) holds, per route, the smallest epsilon its plan reaches within N
    trainings here (``verify --reach N``).

    The result is what ``verify --json`` prints: ``verdict`` ("accept"/"abort"), ``reason``,
    ``certified_epsilon`` (the bound), ``certificate`` (its parts), ``figures``, ``times``,
    ``session``, ``notes``. Raises :class:`protocol.errors.ProtocolError` on bad input and
    :class:`verifier_client.client.TransportError` when the network fails (never a verdict).
    """
    if "secrets_seed" in options:  # a secret derived from a chosen value is no secret
        raise InvalidParameterError(
            "verify: secrets_seed is for tests only; the nonce, salt and spot-checks are random"
        )
    signing_key = key if isinstance(key, Ed25519PrivateKey) else load_private_key(Path(key))
    if epsilon is None:  # plan only: the smallest epsilon within reach_trainings
        if options.get("reach_trainings") is None:
            raise InvalidParameterError("verify: give epsilon (or reach_trainings, to plan only)")
        eps, relative = 1.0, False  # a placeholder: reach plans every epsilon itself
    elif options.get("reach_trainings") is not None:
        raise InvalidParameterError("verify: reach_trainings plans without an epsilon: give one")
    else:
        eps, relative = parse_epsilon(epsilon)
    try:
        opts = Options(task=task, epsilon=eps, relative=relative, seed=_seed(seed), **options)
    except TypeError as exc:  # an unknown option name: the caller's error
        raise InvalidParameterError(f"verify: {exc}") from None
    if resume is None:
        opts.validate()
    with prover_http(prover, timeout_s, transport) as http:
        client = ProverClient(http, key=signing_key, deadline_s=timeout_s)
        return run_verification(
            client, VerifierStore(db), signing_key, opts, prover, progress, resume, notify
        )
