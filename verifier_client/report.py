"""What a user reads after a verification: the verdict in words, the certified bound and its
parts, what "err" and the threshold mean, both sides' trainings and times.

Plain lines (no markup, no dict reprs), so the same text reads well on a terminal, in a log
and in a test; ``verify --json`` prints the figures for machines instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MEANING", "summary_lines", "time_lines"]

#: One line each for the two words a first reader asks about (docs/protocol.md says more).
MEANING = (
    "err (the 'gap') = the attribution's mean squared error minus that of the best possible "
    "linear attribution: 0 is perfect, in the same units as Var f.",
    "threshold: accept iff the certified bound <= epsilon, so an attribution whose err is above "
    "epsilon is accepted at most delta of the time.",
)

# Which recorded phase each side spent its time in (verifier_client/run.py names them).
_PROVER = {"attribution": "attribution", "prover_training": "challenge trainings"}
_VERIFIER = {"pilot": "pilot", "spot_checks": "spot-checks", "certificate": "certificate",
             "fresh_samples": "fresh samples", "local_training": "local trainings"}  # fmt: skip
_TRANSFER = ("download", "post_verdict")


def _fmt(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.3g}"


def _confidence(delta: float) -> str:
    return f"{100 * (1 - delta):.4g} %"


def _asked(result: dict[str, Any]) -> str:
    eps_abs = result.get("epsilon_absolute") or result["epsilon"]
    if result.get("relative"):
        return f"{100 * float(result['epsilon']):.3g} % of Var f = {float(eps_abs):.3g}"
    return f"{float(eps_abs):.3g}"


def _headline(result: dict[str, Any]) -> str:
    verdict = str(result["verdict"]).upper()
    reason = str(result.get("reason") or "")
    cert = result.get("certificate")
    delta = float(result.get("delta") or (cert or {}).get("delta") or 0.05)
    if cert:
        what = "mean err over the targets" if cert.get("aggregate") == "mean" else \
            "err on every target"  # fmt: skip
        bound = cert.get("certified_epsilon")
        if result["verdict"] == "accept":
            return (
                f"{verdict}: certified, the attribution's {what} is at most {_fmt(bound)} "
                f"(you asked <= {_asked(result)}), at {_confidence(delta)} confidence"
            )
        return (
            f"{verdict} ({reason}): the attribution's {what} is only certified to be at most "
            f"{_fmt(bound)}, above the {_asked(result)} you asked (at {_confidence(delta)} "
            "confidence)"
        )
    figures = result.get("figures") or {}
    if reason == "spot_check_mismatch" and figures.get("spot_checks"):
        return (
            f"{verdict} ({reason}): {int(figures.get('spot_mismatches', 0))} of "
            f"{int(figures['spot_checks'])} subsets retrained here differ from the Prover's "
            "values: it reported outputs it did not compute"
        )
    return f"{verdict} ({reason}); epsilon = {_asked(result)}"


def time_lines(times: dict[str, float]) -> list[str]:
    """Wall time split between the Prover (waiting on its jobs), this machine and transfers."""
    lines = []
    for side, names in (("Prover", _PROVER), ("Verifier", _VERIFIER)):
        parts = [(label, times[key]) for key, label in names.items() if key in times]
        if parts:
            total = sum(seconds for _, seconds in parts)
            inner = ", ".join(f"{label} {seconds:.1f}" for label, seconds in parts)
            lines.append(f"{side} {total:.1f} s ({inner})")
    transfer = sum(times.get(key, 0.0) for key in _TRANSFER)
    if transfer:
        lines.append(f"transfers {transfer:.1f} s")
    return lines


def summary_lines(result: dict[str, Any], explain: bool = True) -> list[str]:
    """The verdict in words, then indented lines: the bound's parts, the spot-checks, what err
    and the threshold mean (``explain``), trainings, times and the full session id."""
    lines = [_headline(result)]
    cert = result.get("certificate")
    figures = result.get("figures") or {}
    if cert:
        names = (("point", "estimate"), ("statistical", "statistical"),
                 ("corruption", "corruption"), ("tau_slack", "tau"), ("bias", "bias"))  # fmt: skip
        parts = " + ".join(f"{label} {_fmt(cert.get(key))}" for key, label in names)
        lines.append(f"  bound {_fmt(cert.get('certified_epsilon'))} = {parts}")
        sizes = result.get("sizes") or {}
        predicted, bound = sizes.get("predicted_width"), cert.get("certified_epsilon")
        if predicted is not None and bound is not None:
            lines.append(
                f"  width (bound - estimate): {bound - cert['point']:.3g}, planned "
                f"{predicted:.3g} for an attribution with err = epsilon/2"
            )
    if figures.get("spot_checks") is not None:
        checks, bad = int(figures["spot_checks"]), int(figures.get("spot_mismatches", 0))
        matched = "all matched" if bad == 0 else f"{bad} did NOT match"
        tail = ""
        if cert and cert.get("checked_groups"):
            tail = (f" ({int(cert['checked_groups']):,} whole bases); so at most "
                    f"{int(cert['max_corrupted'])} bases can be wrong unseen. The bound is the "
                    f"smaller of the checked bases' own ({_fmt(cert.get('trusted_bound'))}) and "
                    f"all of E's with that corruption charged ({_fmt(cert.get('robust_bound'))}), "
                    f"{cert.get('validity')}")  # fmt: skip
        elif cert and cert.get("max_corrupted") is not None:
            tail = (f"; so at most {int(cert['max_corrupted'])} values can be wrong unseen, "
                    "charged as corruption")  # fmt: skip
        lines.append(
            f"  spot-checks: {checks:,} of the Prover's {int(result['prover_trainings']):,} "
            f"challenge trainings retrained here, {matched}{tail}"
        )
    if explain and cert:
        lines.extend(f"  {line}" for line in MEANING)
    for note in result.get("notes") or ():
        lines.append(f"  note: {note}")
    if result.get("detail") and not cert:  # with a certificate, the headline says it
        lines.append(f"  {result['detail']}")
    lines.append(
        f"  trainings: Prover {int(result['prover_trainings']):,} for the challenge, "
        f"this machine {int(result['local_trainings']):,}"
    )
    times = result.get("times") or {}
    if times:
        lines.append("  time: " + "; ".join(time_lines(times)))
    lines.append(f"  session {result['session']}")
    return lines
