"""The Prover: a FastAPI service (``serve``) that publishes signed attributions, trains
challenge subsets in resumable background jobs and answers with signed responses, plus the
``train``, ``attribute``, ``publish``, ``info`` and ``keygen`` commands. Depends on
:mod:`protocol` only.

The Python API (:mod:`prover_service.publishing`) gives the commands' results in a program::

    from prover_service import attribute, publish

    result = attribute("digits-logreg", "import", 64, scores="trak/scores/exp.mmap")
    print(result.details["median_r2"], result.details["warnings"])
    out = publish("digits-logreg", scores="trak/scores/exp.mmap", tool="traker",
                  outside_trainings=20, prover_key="prover.pem", db="prover.db")
    print(out.content_hash)
"""

from prover_service.publishing import Published, attribute, publish

__all__ = ["Published", "attribute", "publish"]
