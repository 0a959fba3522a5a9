"""What a user reads after a verification: the certified bound, the verdict, its parts."""

from __future__ import annotations

from typing import Any

__all__ = ["summary_lines"]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What a user reads: the certified bound, the verdict, the parts, both sides' trainings."""
    verdict = str(result["verdict"]).upper()
    cert = result.get("certificate")
    eps_abs = result.get("epsilon_absolute") or result.get("epsilon")
    lines = []
    if cert:
        certified = cert.get("certified_epsilon")
        bound = "unbounded" if certified is None else f"{certified:.4g}"
        what = "mean err over targets" if cert["aggregate"] == "mean" else "err of every target"
        share = ""
        sizes = result.get("sizes") or {}
        if certified is not None and sizes.get("variance_lower_bound"):
            share = f" ({100 * certified / sizes['variance_lower_bound']:.3g} % of Var f)"
        lines.append(
            f"certified: {what} <= {bound}{share} at confidence 1 - {cert['delta']:g}; "
            f"epsilon = {eps_abs:.4g} -> {verdict}"
        )
        parts = ", ".join(
            f"{k} {cert[k]:.3g}" if cert[k] is not None else f"{k} inf"
            for k in ("point", "statistical", "corruption", "tau_slack", "bias")
        )
        lines.append(f"  bound = {parts}; m* = {cert['max_corrupted']} undetected values allowed")
        predicted = sizes.get("predicted_width")
        if predicted is not None and certified is not None:
            lines.append(
                f"  width: predicted {predicted:.3g} (at err = epsilon/2), "
                f"measured {certified - cert['point']:.3g}"
            )
    else:
        lines.append(f"{verdict} ({result['reason']}); epsilon = {eps_abs}")
    if result.get("detail"):
        lines.append(f"  {result['detail']}")
    lines.append(
        f"  session {result['session']}: Prover trained {result['prover_trainings']:,}, "
        f"this machine {result['local_trainings']:,}"
    )
    return lines
