"""The Verifier client: a lightweight command line a data seller runs against a Prover.

For now it offers the diagnostics of the protocol core: ``residual`` (estimate B_0, B_1 and
B_{>=2} of a task) and ``plan`` (every sample size of a protocol run). See ``python -m
verifier_client --help``.
"""

__all__: list[str] = []
