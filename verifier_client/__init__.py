"""The Verifier client: a lightweight command line a data seller runs against a Prover.

``verify`` (interactive protocol; non-interactive and naive baselines), ``audit``, ``history``,
``show``, ``keygen``, ``plan``, ``residual`` and ``demo``; see ``python -m verifier_client
--help``. Depends on :mod:`protocol` only.
"""

__all__: list[str] = []
