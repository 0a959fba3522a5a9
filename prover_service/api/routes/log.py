"""The transparency log over REST: signed tree heads, inclusion and consistency proofs.

Public: a proof reveals only hashes, never a message. Anyone holding a signed message can
compute its leaf hash (:func:`protocol.transparency.leaf_hash` of
:func:`protocol.transparency.log_entry`), ask for its inclusion proof and check it against a
signed head; anyone holding an earlier head can ask for a consistency proof to the current one.
A tree size the log never had (or ``first > second``) is 404: there is no such tree or proof.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from protocol.signing import SignedMessage
from prover_service.api.deps import ServiceDep
from prover_service.api.schemas import READ_ERRORS, ConsistencyProofOut, InclusionProofOut
from prover_service.errors import Invalid, NotFound

router = APIRouter(prefix="/v1/log", tags=["log"])

Hex64 = Annotated[str, Query(pattern=r"^[0-9a-f]{64}$", description="a leaf hash (hex)")]
Size = Annotated[int | None, Query(ge=0, description="tree size; the current one if left out")]


@router.get("/head", responses=READ_ERRORS, summary="The log's signed tree head")
def get_head(service: ServiceDep) -> SignedMessage:
    """A ``treehead.v1`` message: size, root hash (RFC 9162) and time, signed by the Prover."""
    return service.log.head()


@router.get("/inclusion", responses=READ_ERRORS, summary="Inclusion proof of one leaf")
def get_inclusion(leaf: Hex64, service: ServiceDep, size: Size = None) -> InclusionProofOut:
    """``{index, size, leaf_hash, root_hash, proof}``: RFC 9162 ``PATH`` for the leaf in the
    tree of ``size`` entries (404 if the log does not hold the leaf)."""
    try:
        return InclusionProofOut.model_validate(service.log.inclusion(leaf, size))
    except Invalid as exc:  # no such tree, or the leaf is not in it
        raise NotFound(str(exc)) from None


@router.get("/consistency", responses=READ_ERRORS, summary="Consistency proof of two sizes")
def get_consistency(
    first: Annotated[int, Query(ge=0)], service: ServiceDep, second: Size = None
) -> ConsistencyProofOut:
    """``{first, second, first_root, second_root, proof}``: RFC 9162 ``PROOF`` that the tree of
    ``first`` entries is a prefix of the tree of ``second`` (the current one if left out)."""
    try:
        return ConsistencyProofOut.model_validate(service.log.consistency(first, second))
    except Invalid as exc:  # a size the log never had (or first > second): no such proof
        raise NotFound(str(exc)) from None
