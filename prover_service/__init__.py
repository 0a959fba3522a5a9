"""The Prover service (FastAPI): trains models on challenge subsets, computes attributions and
answers challenges. It depends on :mod:`protocol` only; the web service itself arrives with the
wire-protocol issue. For now it exposes the shared diagnostics (``python -m prover_service
--help``).
"""

__all__: list[str] = []
