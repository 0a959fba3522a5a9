"""The Prover: a FastAPI service (``serve``) that publishes signed attributions, trains
challenge subsets in resumable background jobs and answers with signed responses, plus the
``train``, ``attribute``, ``info`` and ``keygen`` commands. Depends on :mod:`protocol` only.
"""

__all__: list[str] = []
