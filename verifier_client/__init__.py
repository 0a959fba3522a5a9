"""The Verifier client: a lightweight command line a data seller runs against a Prover, and the
same run as a Python call.

``verify`` (interactive protocol; non-interactive and naive baselines), ``audit``, ``history``,
``show``, ``keygen``, ``plan``, ``residual`` and ``demo``; see ``vda-verifier --help``
(``python -m verifier_client --help``). From Python::

    from verifier_client import verify

    result = verify("http://127.0.0.1:8000", "digits-logreg", 0.25, key="verifier.key")

Depends on :mod:`protocol` only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier_client.api import verify
    from verifier_client.report import summary_lines
    from verifier_client.run import Options, run_verification

__all__ = ["Options", "run_verification", "summary_lines", "verify"]

# Imported on first access, so that ``vda-verifier --help`` does not load the store (sqlalchemy).
_LAZY = {
    "Options": "verifier_client.run",
    "run_verification": "verifier_client.run",
    "summary_lines": "verifier_client.report",
    "verify": "verifier_client.api",
}


def __getattr__(name: str) -> Any:
    """The public API (module doc), imported on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'verifier_client' has no attribute {name!r}")
