"""The Merkle log against RFC 6962 / RFC 9162 test vectors, the reference against the
definitions, and every proof of small trees: valid ones verify, corrupted ones never do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.signing import generate_key, sign_message
from protocol.transparency import (
    EMPTY_ROOT,
    LogProofError,
    TreeHead,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    log_entry,
    node_hash,
    root_hash,
    subtree_from_leaves,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "rfc6962_merkle.json").read_text())
LEAVES = [leaf_hash(bytes.fromhex(d)) for d in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(r) for r in VECTORS["roots"]]


def _hexes(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in items]


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 literally: split at the largest power of two smaller than n."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while 2 * k < len(leaves):
        k *= 2
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_leaf_hashes_and_roots_match_the_vectors() -> None:
    assert [h.hex() for h in LEAVES] == VECTORS["leaf_hashes"]
    for size, root in enumerate(ROOTS):
        assert root_hash(LEAVES[:size]) == root


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}@{c['size']}")
def test_inclusion_proofs_match_the_vectors(case: dict) -> None:  # type: ignore[type-arg]
    index, size, want = case["index"], case["size"], _hexes(case["proof"])
    assert inclusion_proof(index, size, subtree_from_leaves(LEAVES)) == want
    verify_inclusion(LEAVES[index], index, size, want, ROOTS[size])


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['first']}-{c['second']}"
)
def test_consistency_proofs_match_the_vectors(case: dict) -> None:  # type: ignore[type-arg]
    m, n, want = case["first"], case["second"], _hexes(case["proof"])
    assert consistency_proof(m, n, subtree_from_leaves(LEAVES)) == want
    verify_consistency(m, n, ROOTS[m], ROOTS[n], want)


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 8]) + h[1:]


def test_every_proof_of_trees_up_to_33_verifies_and_no_corruption_does() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(33)]
    sub = subtree_from_leaves(leaves)
    for n in range(1, 34):
        root = _mth(leaves[:n])
        assert root_hash(leaves[:n]) == root
        for i in range(n):
            proof = inclusion_proof(i, n, sub)
            verify_inclusion(leaves[i], i, n, proof, root)
            bad = [
                (leaves[i], i, n, proof[:-1]),
                (leaves[i], i, n, [*proof, root]),
                (_flip(leaves[i]), i, n, proof),
                (leaves[i], i, n, [_flip(p) for p in proof]),
            ]
            if n > 1:
                bad.append((leaves[i], (i + 1) % n, n, proof))
            for args in bad:
                if list(args[3]) == proof and args[0] == leaves[i] and args[1] == i:
                    continue
                with pytest.raises(LogProofError):
                    verify_inclusion(*args, root)  # type: ignore[arg-type]
        for m in range(0, n + 1):
            proof = consistency_proof(m, n, sub)
            first = _mth(leaves[:m])
            verify_consistency(m, n, first, root, proof)
            if 0 < m < n:
                with pytest.raises(LogProofError):
                    verify_consistency(m, n, _flip(first), root, proof)
                with pytest.raises(LogProofError):
                    verify_consistency(m, n, first, _flip(root), proof)
                with pytest.raises(LogProofError):
                    verify_consistency(m, n, first, root, [*proof[:-1], _flip(proof[-1])])
                with pytest.raises(LogProofError):
                    verify_consistency(m, n, first, root, proof[:-1])


def test_a_rewritten_or_shrunk_log_is_not_consistent() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(12)]
    forgot = leaves[:5] + leaves[6:]  # entry 5 (say, an aborted verdict) removed
    for m in (6, 8):  # the earlier head held the removed entry; 8 is a power of two
        proof = consistency_proof(m, 11, subtree_from_leaves(forgot))
        with pytest.raises(LogProofError):
            verify_consistency(m, 11, root_hash(leaves[:m]), root_hash(forgot), proof)
    with pytest.raises(LogProofError, match="shrank"):
        verify_consistency(12, 11, root_hash(leaves), root_hash(forgot), [])


@given(st.integers(1, 300), st.data())
def test_inclusion_and_consistency_for_random_sizes(size: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(size)]
    sub = subtree_from_leaves(leaves)
    i = data.draw(st.integers(0, size - 1))
    verify_inclusion(leaves[i], i, size, inclusion_proof(i, size, sub), root_hash(leaves))
    m = data.draw(st.integers(0, size))
    proof = consistency_proof(m, size, sub)
    verify_consistency(m, size, root_hash(leaves[:m]), root_hash(leaves), proof)
    assert len(proof) <= 2 * max(1, size.bit_length())


def test_impossible_sizes_are_refused() -> None:
    with pytest.raises(LogProofError):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(LogProofError):
        verify_inclusion(LEAVES[0], 2, 1, [], LEAVES[0])
    with pytest.raises(LogProofError):
        verify_consistency(1, 1, ROOTS[1], ROOTS[2], [])
    with pytest.raises(LogProofError):
        verify_consistency(0, 3, EMPTY_ROOT, ROOTS[3], [ROOTS[1]])
    with pytest.raises(LogProofError):
        inclusion_proof(3, 3, subtree_from_leaves(LEAVES))


def test_a_log_entry_binds_the_signature_and_a_tree_head_signs() -> None:
    key = generate_key()
    head = TreeHead(size=3, root_hash=ROOTS[3].hex(), timestamp=1)
    signed = sign_message(key, head)
    assert signed.type == "treehead.v1"
    other = signed.model_copy(update={"signature": "0" * 128})
    assert leaf_hash(log_entry(signed)) != leaf_hash(log_entry(other))
    assert log_entry(signed) == log_entry(
        type(signed).model_validate_json(signed.model_dump_json())
    )


def test_public_api_is_sorted_and_real() -> None:
    import protocol.transparency as mod

    assert list(mod.__all__) == sorted(mod.__all__)
    assert all(hasattr(mod, name) for name in mod.__all__)
