"""Operating characteristic of the certificate (issue 10): acceptance against err / epsilon.

On a planted task with exact err (N = 20, Z = 4, B0 = 0.2, B1 = 4, B2 = 0.3, B3 = 0.1, seed
noise 0.2), datamodels g_c = Phi with its slopes scaled so that err = c epsilon exactly, for
c in (0, 1/4, 1/2, 1, 5/4, 2). Either layout (``--layout``; the Verifier's default is
``shared-base``). Sizes from :func:`protocol.certificate.plan_certificate` with a pilot on
g_{1/2}. Pair layout: k = ``--spot-fraction`` |E| spot-checked subsets. Shared-base layout, as
the session draws them: k = ``--spot-fraction`` n whole bases (raised to
:func:`protocol.certificate.clt_fewest` under ``clt``), m* and the counts in bases, and U the
smaller of the checked bases' bound and the robust one (``certify(..., checked=...)``) at the
default validity. Each challenge is simulated at the level of value arrays
(numpy masks with the design's joint law, planted ``evaluate``, no HTTP).

For c >= 1 the Prover also corrupts ``m`` values with every adversary of
:mod:`protocol.adversaries` (extreme; quiet at the mean or max aggregate, moved to the trim
edge m*) for m in :func:`protocol.adversaries.strategic_counts` (1 .. 2 m* + 2; beyond, the
spot-checks pass with probability <= delta_spot^2). The spot-check randomness is integrated
exactly: P(accept) = mean over challenges of P(all k checks miss the m values) x 1[the
decision accepts]. "after" is the certificate (``clt``); for the pair layout "before" is the
old decision (point estimate of the gap <= epsilon / 2, max or mean over targets) and
``k_needed_before`` the smallest k that brings "before" to <= delta. ``before`` repeats that
at the old sizes (pair layout, |E| = 12,000) with the certificate's width beside.

    OMP_NUM_THREADS=1 python benchmarks/soundness.py --layout shared-base --reps 200 \
        --before-reps 0 --out docs/soundness-shared.json --plot docs/soundness-shared.png
    OMP_NUM_THREADS=1 python benchmarks/soundness.py --layout pairs --reps 50 \
        --before-reps 0 --out docs/soundness.json --plot docs/soundness.png
    OMP_NUM_THREADS=1 python benchmarks/soundness.py --reps 0 --before-reps 50 \
        --out docs/soundness-before.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from protocol.adversaries import (  # noqa: E402
    concentrated_error,
    corrupt_extreme,
    corrupt_neutral,
    corrupt_quiet,
    strategic_counts,
)
from protocol.certificate import (  # noqa: E402
    CLT_MIN_EVENTS,
    certify,
    clt_fewest,
    default_validity,
    max_undetected,
    pass_probability,
    pilot_figures,
    plan_certificate,
)
from protocol.datamodel import Datamodel  # noqa: E402
from protocol.residual import estimate_gap  # noqa: E402
from protocol.tasks import PlantedTask  # noqa: E402

RHOS = (0.0, 0.2, 0.4)
MULTIPLIERS = (0.0, 0.25, 0.5, 1.0, 1.25, 2.0)
ADVERSARIES = {"extreme": corrupt_extreme, "quiet": corrupt_quiet}


class _Design:
    def __init__(
        self, rhos: tuple[float, ...], n: int, layout: str = "pairs", p: float = 0.5
    ) -> None:
        self.rhos = rhos
        self.pairs_per_level = n
        self.layout = layout
        self.p = p


def simulate(
    rng: np.random.Generator, n_train: int, n: int, layout: str = "pairs"
) -> tuple[_Design, Any, Any]:
    """Masks in design order and independent seeds: pairs (6n, N), the pairs at each level in
    turn; shared-base (4n, N), x_j then x'_{l,j} (one uniform per coordinate, nested keeps)."""
    if layout == "shared-base":
        x = rng.random((n, n_train)) < 0.5
        u = rng.random((n, n_train))
        fresh = rng.random((n, n_train)) < 0.5
        rows = [x] + [np.where(u < rho, x, fresh) for rho in RHOS]
        masks = np.stack(rows, axis=1).reshape(-1, n_train)
    else:
        parts = []
        for rho in RHOS:
            x = rng.random((n, n_train)) < 0.5
            xp = np.where(rng.random((n, n_train)) < rho, x, rng.random((n, n_train)) < 0.5)
            pair = np.empty((2 * n, n_train), dtype=bool)
            pair[0::2], pair[1::2] = x, xp
            parts.append(pair)
        masks = np.concatenate(parts)
    seeds = rng.integers(0, 2**63, size=len(masks), dtype=np.int64).astype(np.uint64)
    return _Design(RHOS, n, layout), masks, seeds


def with_err(task: PlantedTask, err: float) -> Datamodel:
    """Phi with slopes scaled by lambda = 1 - sqrt(err / B1), constant coefficient kept:
    err(g) = (1 - lambda)^2 B1 = err exactly (every target has B1 = task.b1)."""
    opt = task.optimal_datamodel()
    lam = 1.0 - np.sqrt(err / task.spectrum().b1)
    w = opt.weights * lam[:, None]
    const = opt.intercept + 0.5 * opt.weights.sum(axis=1)
    return Datamodel(const - 0.5 * w.sum(axis=1), w)


def k_needed(m: int, n_subsets: int, p_accept: float, delta: float) -> int:
    """Smallest k with P(all k checks miss m of n_subsets) x p_accept <= delta."""
    if p_accept <= delta:
        return 0
    lo, hi = 0, n_subsets - m
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pass_probability(n_subsets, m, mid) * p_accept <= delta else (mid, hi)
    return hi


def run(
    aggregate: str,
    epsilon: float,
    delta: float,
    reps: int,
    frac: float,
    seed: int,
    layout: str = "pairs",
) -> dict[str, Any]:
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=4.0, b2=0.3, b3=0.1, noise=0.2, seed=1)
    rng = np.random.default_rng(seed)
    design, masks, seeds = simulate(rng, task.n_train, 2000, layout)
    pilot_g = with_err(task, epsilon / 2)
    sd, mse = pilot_figures(task.evaluate(masks, seeds), pilot_g.predict(masks), design, aggregate)  # type: ignore[arg-type]
    split = task.n_targets if aggregate == "max" else 1
    shared = layout == "shared-base"
    per_j = 4 if shared else 6
    pl = plan_certificate(
        epsilon, delta, sd_pair_sum=1.1 * sd, mse=1.1 * mse, rhos=RHOS,
        spot_fraction=frac, n_targets_split=split, layout=layout,
    )  # fmt: skip
    n = pl.pairs_per_level
    n_sub = per_j * n
    validity = default_validity(0.5, n) if shared else "betting"
    if shared:  # whole bases, as the session draws them: m* and the counts are in bases
        k = min(n, math.ceil(frac * n))
        if validity == "clt":  # the session's raise: clt holds on the checked bases too
            k = max(k, min(n, clt_fewest(0.5)))
        m_star = max_undetected(n, k, delta / 2)
        m_grid = strategic_counts(n, k, delta / 2)
    else:
        k = pl.spot_checks
        m_star = max_undetected(n_sub, k, delta / 2)
        m_grid = strategic_counts(n_sub, k, delta / 2)
    models = {c: with_err(task, c * epsilon) for c in MULTIPLIERS}
    ranges = {c: g.output_range() for c, g in models.items()}
    truth = {c: float(np.max(task.err(g))) for c, g in models.items()}
    acc: dict[str, list[float]] = {}
    cert_eps: dict[float, list[float]] = {c: [] for c in MULTIPLIERS}
    bounds: dict[tuple[str, float, int], list[float]] = {}

    def certificate(values: Any, preds: Any, c: float, checked: Any = None) -> Any:
        if not shared:
            return certify(values, preds, design, delta=delta, aggregate=aggregate,  # type: ignore[arg-type]
                           spot_checks=k, bound=task.bound)  # fmt: skip
        return certify(values, preds, design, delta=delta, aggregate=aggregate,  # type: ignore[arg-type]
                       checked=checked, bound=task.bound, validity=validity,  # type: ignore[arg-type]
                       prediction_range=ranges[c])  # fmt: skip

    def before(values: Any, preds: Any) -> bool | None:
        if layout != "pairs":
            return None  # the old decision (estimate_gap) reads the pair layout only
        gap = estimate_gap(values, preds, design).gap
        return bool((gap.max() if aggregate == "max" else gap.mean()) <= epsilon / 2)

    def corrupt(name: str, f: Any, preds: Any, m: int) -> Any:
        if name == "quiet":
            return corrupt_quiet(f, preds, design, m, bound=task.bound, aggregate=aggregate,  # type: ignore[arg-type]
                                 rank=min(m, m_star))  # fmt: skip
        return corrupt_extreme(f, preds, design, m, bound=task.bound)

    t0 = time.time()
    for _ in range(reps):
        design, masks, seeds = simulate(rng, task.n_train, n, layout)
        f = task.evaluate(masks, seeds)
        for c, g in models.items():
            preds = g.predict(masks)
            cert = certificate(f, preds, c, rng.choice(n, k, replace=False) if shared else None)
            cert_eps[c].append(cert.certified_epsilon)
            acc.setdefault(f"honest|{c}|0|after", []).append(float(cert.accepts(epsilon)))
            if c < 1.0:
                continue
            for name in ADVERSARIES:
                for m in m_grid:
                    bad = corrupt(name, f, preds, m)
                    if shared:  # the check passes iff every checked base is clean: weight
                        # by its probability, draw the checked bases among the clean ones
                        touched = np.unique(np.flatnonzero(np.any(bad != f, axis=1)) // 4)
                        w = pass_probability(n, len(touched), k)
                        clean = np.setdiff1d(np.arange(n), touched)
                        seen = certificate(bad, preds, c, rng.choice(clean, k, replace=False)) \
                            if w > 0 else None  # fmt: skip
                    else:
                        w = pass_probability(len(f), m, k)
                        seen = certificate(bad, preds, c)
                    if seen is None:
                        acc.setdefault(f"{name}|{c}|{m}|after", []).append(0.0)
                        continue
                    acc.setdefault(f"{name}|{c}|{m}|after", []).append(w * seen.accepts(epsilon))
                    bounds.setdefault((name, c, m), []).append(seen.certified_epsilon)
                    old = before(bad, preds)
                    if old is not None:
                        acc.setdefault(f"{name}|{c}|{m}|before", []).append(w * old)
                        acc.setdefault(f"{name}|{c}|{m}|before_unchecked", []).append(float(old))
    rows = []
    for key, vals in sorted(acc.items()):
        name, c, m, kind = key.split("|")
        rows.append({"adversary": name, "err_over_eps": float(c), "m": int(m), "decision": kind,
                     "p_accept": float(np.mean(vals)), "reps": len(vals)})  # fmt: skip
    needed = []
    for row in rows:
        if row["decision"] == "before_unchecked":
            needed.append({"adversary": row["adversary"], "err_over_eps": row["err_over_eps"],
                           "m": row["m"], "k_needed_before": k_needed(
                               row["m"], n_sub, row["p_accept"], delta)})  # fmt: skip
    return {
        "layout": layout, "aggregate": aggregate, "epsilon": epsilon, "delta": delta,
        "spot_fraction": frac,
        "validity": validity,
        "plan": {"pairs_per_level": n, "n_subsets": n_sub, "spot_checks": k,
                 "spot_checks_are": "bases" if shared else "subsets",
                 "max_corrupted": m_star, "planner_max_corrupted": pl.max_corrupted,
                 "predicted_width": pl.predicted_width, "parts": pl.parts, "pilot_sd": sd,
                 "pilot_mse": mse},
        "counts": list(m_grid),
        "exact_err": truth,
        "certified_epsilon_median": {str(c): float(np.median(v)) for c, v in cert_eps.items()},
        "summary": summarise(rows, cert_eps),
        "lowest_median_U": lowest_bounds(bounds, m_star),
        "rows": rows, "k_needed_before": needed, "seconds": time.time() - t0,
    }  # fmt: skip


def lowest_bounds(bounds: dict[tuple[str, float, int], list[float]], m_star: int) -> list[Any]:
    """Per adversary and err / epsilon: the count m <= m* whose median U is lowest (how far the
    adversary pushes the certificate where the spot-checks do not stop it)."""
    best: dict[tuple[str, float], tuple[int, float]] = {}
    for (name, c, m), us in bounds.items():
        med = float(np.median(us))
        if m <= m_star and med < best.get((name, c), (0, np.inf))[1]:
            best[(name, c)] = (m, med)
    return [{"adversary": name, "err_over_eps": c, "m": m, "median_U": med}
            for (name, c), (m, med) in sorted(best.items())]  # fmt: skip


def summarise(rows: list[dict[str, Any]], cert_eps: dict[float, list[float]]) -> list[Any]:
    """Per err / epsilon: honest P(accept), median U, and the worst adversary (name, m,
    P(accept)) for each decision: the table of ``docs/soundness.md``."""
    out = []
    for c, us in cert_eps.items():
        line: dict[str, Any] = {"err_over_eps": c, "median_U": float(np.median(us))}
        for r in rows:
            if r["err_over_eps"] != c:
                continue
            if r["adversary"] == "honest":
                line["honest_p_accept"] = r["p_accept"]
                continue
            kind = r["decision"]
            if kind not in line or r["p_accept"] > line[kind]["p_accept"]:
                line[kind] = {"adversary": r["adversary"], "m": r["m"], "p_accept": r["p_accept"]}
        out.append(line)
    return out


def before_regime(reps: int, seed: int) -> dict[str, Any]:
    """Today's decision at today's sizes (|E| = 12,000, n = 2,000, eps = 0.5, B1 = 1 task):
    P(plain estimate accepts | m corrupted) and the k that brings P(accept) to <= delta; and the
    certificate's U for an honest g with err = eps / 2 at k = |E| (trusted), 50 %, 20 %, 10 %."""
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=1.0, b2=0.3, b3=0.1, noise=0.2, seed=1)
    rng = np.random.default_rng(seed)
    eps, n, delta = 0.5, 2000, 0.05
    grid = (1, 2, 5, 10, 20, 40, 80)
    acc: dict[tuple[float, str, int], list[bool]] = {}
    honest: dict[str, list[float]] = {}
    fracs: dict[str, float | None] = {"trusted": None, "0.5": 0.5, "0.2": 0.2, "0.1": 0.1}
    for _ in range(reps):
        design, masks, seeds = simulate(rng, task.n_train, n)
        f = task.evaluate(masks, seeds)
        for c in (1.0, 2.0):
            preds = with_err(task, c * eps).predict(masks)
            for name, adv in ADVERSARIES.items():
                for m in grid:
                    bad = adv(f, preds, design, m, bound=task.bound)  # type: ignore[operator]
                    gap = estimate_gap(bad, preds, design).gap.max()
                    acc.setdefault((c, name, m), []).append(bool(gap <= eps / 2))
        preds = with_err(task, eps / 2).predict(masks)
        for label, frac in fracs.items():
            k = None if frac is None else int(frac * 6 * n)
            cert = certify(f, preds, design, delta=delta, spot_checks=k)
            honest.setdefault(label, []).append(cert.certified_epsilon)
    rows = []
    for (c, name, m), v in sorted(acc.items()):
        pa = float(np.mean(v))
        rows.append({"err_over_eps": c, "adversary": name, "m": m, "p_accept_plain": pa,
                     "k_needed_before": k_needed(m, 6 * n, pa, delta)})  # fmt: skip
    cert_rows = {
        label: {"median_U": float(np.median(v)), "p_accept": float(np.mean(np.array(v) <= eps))}
        for label, v in honest.items()
    }
    return {"epsilon": eps, "pairs_per_level": n, "n_subsets": 6 * n, "delta": delta,
            "reps": reps, "plain": rows, "certificate_honest_half_eps": cert_rows}  # fmt: skip


SWEEP_P = (0.02, 0.05, 0.1, 0.3, 0.5)
SWEEP_NOISE = (0.0, 0.02, 0.2)
SWEEP_ADVERSARIES = ("extreme", "quiet", "neutral")
ATTACK_AT = (1.0,)  # err / epsilon where the adversaries are run: the boundary, the hardest


def simulate_shared(
    rng: np.random.Generator, n_train: int, n: int, p: float
) -> tuple[_Design, Any, Any]:
    """Shared-base masks ((1 + L) n, N) at subset fraction p, and independent seeds."""
    x = rng.random((n, n_train)) < p
    keep = rng.random((n, n_train))
    fresh = rng.random((n, n_train)) < p
    rows = [x] + [np.where(keep < rho, x, fresh) for rho in RHOS]
    masks = np.stack(rows, axis=1).reshape(-1, n_train)
    seeds = rng.integers(0, 2**63, size=len(masks), dtype=np.int64).astype(np.uint64)
    return _Design(RHOS, n, "shared-base", p), masks, seeds


def sweep_cell(
    p: float, noise: float, aggregate: str, reps: int, n: int, delta: float, seed: int,
    validity: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One cell of issue 18's sweep: the rare-event datamodel (all of g's error on one
    training example, err = c epsilon exactly) on a planted task at subset fraction p and seed
    noise ``noise``, n shared bases, k = ceil(|E| / 10) spot-checks, epsilon = Var f / 4.

    Spot-checks are whole bases (k = ceil(n / 10), a tenth of E's trainings, raised under
    ``clt`` to the fewest bases clt is allowed at, as the session sizes them), so m* counts
    corrupted bases. Honest: coverage (U >= err) at c = 1/2 and 1, and acceptance at c = 1/2
    (completeness).
    Every adversary at c = 1 (the boundary), for every count of strategic_counts (up to 2 m* + 2):
    P(accept) = mean over challenges of P(all k checks miss the m values) x 1[accept]; the
    row reported is the adversary's best count. ``validity``: None is the product's default
    (:func:`protocol.certificate.default_validity`)."""
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=2.0, b2=0.3, b3=0.1, noise=noise,
                       seed=1)  # fmt: skip
    spec = task.spectrum(p)
    epsilon = 0.25 * float(spec.variance.mean())
    opt = task.optimal_datamodel(p)
    models = {c: concentrated_error(opt, 0, c * epsilon, p) for c in (0.5, 1.0)}
    truth = {c: float(task.err(g, p).mean() if aggregate == "mean" else task.err(g, p).max())
             for c, g in models.items()}  # fmt: skip
    ranges = {c: g.output_range() for c, g in models.items()}
    n_sub = 4 * n
    chosen = validity or default_validity(p, n)
    k = math.ceil(n / 10)  # whole bases checked: a tenth of E's trainings
    if chosen == "clt":  # as the session sizes it: clt's condition holds at k too
        k = max(k, min(n, math.ceil(CLT_MIN_EVENTS / min(p, 1 - p) ** 2)))
    d_spot = delta / 2
    m_star = max_undetected(n, k, d_spot)
    counts = strategic_counts(n, k, d_spot)
    rng = np.random.default_rng(seed)
    honest_cover: dict[float, list[bool]] = {0.5: [], 1.0: []}
    honest_accept: list[bool] = []
    u_half: list[float] = []
    sources: list[str] = []
    attack: dict[tuple[str, float, int], list[float]] = {}
    t0 = time.time()
    for _ in range(reps):
        design, masks, seeds = simulate_shared(rng, task.n_train, n, p)
        f = task.evaluate(masks, seeds)
        for c, g in models.items():
            preds = g.predict(masks)

            def cert(
                values: Any, checked: Any, preds: Any = preds, c: float = c, design: Any = design
            ) -> Any:
                return certify(values, preds, design, delta=delta, aggregate=aggregate,  # type: ignore[arg-type]
                               checked=checked, bound=task.bound, validity=chosen,  # type: ignore[arg-type]
                               prediction_range=ranges[c], detail=False,
                               decide_at=None if c == 0.5 else epsilon)  # fmt: skip

            if c <= 1.0:
                honest = cert(f, rng.choice(n, k, replace=False))
                honest_cover[c].append(honest.certified_epsilon >= truth[c])
                if c == 0.5:
                    honest_accept.append(honest.accepts(epsilon))
                    u_half.append(honest.certified_epsilon)
                    sources.append(honest.source)
            if c not in ATTACK_AT:
                continue
            for name in SWEEP_ADVERSARIES:
                for m in counts:
                    if name == "extreme":
                        bad = corrupt_extreme(f, preds, design, m, bound=task.bound)
                    elif name == "quiet":
                        bad = corrupt_quiet(f, preds, design, m, bound=task.bound,
                                            aggregate=aggregate, rank=min(m, m_star))  # type: ignore[arg-type]  # fmt: skip
                    else:
                        bad = corrupt_neutral(f, preds, design, m, bound=task.bound,
                                              aggregate=aggregate)  # type: ignore[arg-type]  # fmt: skip
                    # the check passes iff every checked base is clean: weight by its
                    # probability and draw the checked bases among the clean ones
                    touched = np.unique(np.flatnonzero(np.any(bad != f, axis=1)) // 4)
                    w = pass_probability(n, len(touched), k)
                    if w <= 0.0:
                        attack.setdefault((name, c, m), []).append(0.0)
                        continue
                    clean = np.setdiff1d(np.arange(n), touched)
                    seen = cert(bad, rng.choice(clean, k, replace=False))
                    attack.setdefault((name, c, m), []).append(w * seen.accepts(epsilon))
    rows = []
    for name in SWEEP_ADVERSARIES:
        for c in ATTACK_AT:
            by_m = {m: float(np.mean(attack[(name, c, m)])) for m in counts}
            worst = max(by_m, key=lambda m: by_m[m])
            rows.append({"adversary": name, "err_over_eps": c, "worst_m": worst,
                         "p_accept": by_m[worst], "by_count": by_m})  # fmt: skip
    return {
        "p": p, "noise": noise, "aggregate": aggregate, "validity": chosen, "pairs": n,
        "n_subsets": n_sub, "checked_bases": k, "max_corrupted": m_star, "epsilon": epsilon,
        "delta": delta, "reps": reps, "exact_err": truth,
        "honest_coverage": {str(c): float(np.mean(v)) for c, v in honest_cover.items()},
        "completeness_half_eps": float(np.mean(honest_accept)),
        "median_U_half_eps": float(np.median(u_half)),
        "trusted_share_half_eps": float(np.mean([x == "trusted" for x in sources])),
        "adversaries": rows, "seconds": time.time() - t0,
    }  # fmt: skip


def sweep(
    reps: int, n: int, delta: float, seed: int, cells: str | None, out_path: str | None = None
) -> list[dict[str, Any]]:
    """Issue 18's grid: p x seed noise x aggregate, or only ``cells`` ("p:noise:agg,...", in
    that order). Each finished cell is printed and, with ``out_path``, the file rewritten."""
    grid = [(p, z, a) for p in SWEEP_P for z in SWEEP_NOISE for a in ("mean", "max")]
    seeds = {(f"{p:g}", f"{z:g}", a): seed + i for i, (p, z, a) in enumerate(grid)}
    keys = list(seeds) if not cells else [tuple(c.split(":")) for c in cells.split(",")]
    out = []
    for key in keys:
        p, noise, agg = float(key[0]), float(key[1]), key[2]
        cell = sweep_cell(p, noise, agg, reps, n, delta, seeds[key])  # type: ignore[index]
        print(json.dumps({k: v for k, v in cell.items() if k != "adversaries"}), flush=True)
        out.append(cell)
        if out_path:
            with open(out_path, "w") as fh:
                fh.write(json.dumps({"benchmark": "soundness-sweep", "cells": out}, indent=1))
    return out


def sweep_tables(paths: list[str]) -> str:
    """The two tables of docs/soundness.md from sweep JSON files: soundness (the worst
    adversary's P(accept) at err = epsilon, with its count) and honest coverage/completeness.
    Per cell one run is shown: the one with the most challenges, and of those the one from
    the file given last (a rerun supersedes an earlier or smaller run of the same cell)."""
    best: dict[tuple[str, float, float], tuple[tuple[int, int], dict[str, Any]]] = {}
    for order, path in enumerate(paths):
        with open(path) as fh:
            for c in json.load(fh)["cells"]:
                key = (c["aggregate"], c["p"], c["noise"])
                rank = (c["reps"], order)
                if key not in best or rank >= best[key][0]:
                    best[key] = (rank, c)
    cells = [c for _, c in best.values()]
    cells.sort(key=lambda c: (c["aggregate"], c["p"], c["noise"]))
    head = ("| aggregate | p | seed noise | validity | reps | m* | " +
            " | ".join(f"{a}: P(accept), worst m" for a in SWEEP_ADVERSARIES) + " |")  # fmt: skip
    lines = [head, "|" + "---|" * (6 + len(SWEEP_ADVERSARIES))]
    for c in cells:
        worst = {r["adversary"]: r for r in c["adversaries"] if r["err_over_eps"] == 1.0}
        cols = [f"{worst[a]['p_accept']:.3f} (m = {worst[a]['worst_m']})" for a in
                SWEEP_ADVERSARIES]  # fmt: skip
        row = f"| {c['aggregate']} | {c['p']:g} | {c['noise']:g} | {c['validity']} | "
        lines.append(row + f"{c['reps']} | {c['max_corrupted']} | " + " | ".join(cols) + " |")
    lines += ["", "| aggregate | p | seed noise | validity | coverage at err = eps/2 | "
              "coverage at err = eps | completeness at eps/2 | median U at eps/2 (eps) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in cells:
        cov = c["honest_coverage"]
        lines.append(f"| {c['aggregate']} | {c['p']:g} | {c['noise']:g} | {c['validity']} | "
                     f"{cov['0.5']:.3f} | {cov['1.0']:.3f} | {c['completeness_half_eps']:.3f} | "
                     f"{c['median_U_half_eps']:.3g} ({c['epsilon']:.3g}) |")  # fmt: skip
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        rows = res["rows"]
        honest = sorted(
            (r["err_over_eps"], r["p_accept"]) for r in rows if r["adversary"] == "honest"
        )
        ax.plot(*zip(*honest, strict=True), "o-", label="honest Prover, certificate")

        def worst(kind: str, rows: list[dict[str, Any]] = rows) -> list[tuple[float, float]]:
            pts: dict[float, float] = {}
            for r in rows:
                if r["adversary"] != "honest" and r["decision"] == kind:
                    pts[r["err_over_eps"]] = max(pts.get(r["err_over_eps"], 0.0), r["p_accept"])
            return sorted(pts.items())

        ax.plot(*zip(*worst("after"), strict=True), "s-", label="worst adversary, certificate")
        if worst("before"):
            ax.plot(*zip(*worst("before"), strict=True), "^--", label="worst adversary, before")
        ax.axhline(res["delta"], color="grey", lw=0.8, ls=":")
        ax.axhline(1 - res["delta"], color="grey", lw=0.8, ls=":")
        ax.axvline(1.0, color="k", lw=0.6)
        ax.set_xlabel("err / epsilon")
        ax.set_ylabel("P(accept)")
        plan = res["plan"]
        title = f"{res['layout']}, {res['aggregate']}: eps={res['epsilon']}, "
        title += f"n={plan['pairs_per_level']}, k={plan['spot_checks']}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=200, help="0 skips the operating characteristic")
    ap.add_argument("--layout", choices=("shared-base", "pairs"), default="shared-base")
    ap.add_argument("--aggregates", default="mean,max", help="comma-separated: mean, max")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--spot-fraction", type=float, default=0.2)
    ap.add_argument("--epsilon-mean", type=float, default=2.0)
    ap.add_argument("--epsilon-max", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--before-reps", type=int, default=50, help="0 skips the old-sizes table")
    ap.add_argument("--sweep", action="store_true", help="issue 18's p x noise x aggregate grid")
    ap.add_argument("--sweep-pairs", type=int, default=1000, help="shared bases per challenge")
    ap.add_argument("--cells", default=None, help='sweep only these, e.g. "0.05:0.02:mean"')
    ap.add_argument("--tables", nargs="*", default=None, help="print docs tables from sweep JSON")
    ap.add_argument("--witness-runs", type=int, default=0, help="witness attacks: runs per row")
    args = ap.parse_args()
    if args.witness_runs:  # the witness route's rows (section at the end of this file)
        print(json.dumps({"benchmark": "soundness", "witness": witness_rows(args.witness_runs)},
                         indent=1))  # fmt: skip
        return
    if args.tables:
        print(sweep_tables(args.tables))
        return
    if args.sweep:
        cells = sweep(args.reps, args.sweep_pairs, args.delta, args.seed, args.cells, args.out)
        text = json.dumps({"benchmark": "soundness-sweep", "cells": cells}, indent=1)
        print(text)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text + "\n")
        return
    before = before_regime(args.before_reps, args.seed + 2) if args.before_reps else None
    eps = {"mean": args.epsilon_mean, "max": args.epsilon_max}
    offset = {"mean": 0, "max": 1}
    results = [
        run(agg, eps[agg], args.delta, args.reps, args.spot_fraction, args.seed + offset[agg],
            args.layout)
        for agg in args.aggregates.split(",")
        if args.reps
    ]  # fmt: skip
    text = json.dumps({"benchmark": "soundness", "before": before, "results": results}, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.plot and results:
        plot(results, args.plot)


# -- the witness route (docs/certified-optimality.md) ----------------------------------------
def witness_rows(runs: int, bases: int = 4, epsilon: float = 0.05) -> list[dict[str, Any]]:
    """One row per attack of :mod:`protocol.witness_adversaries` on digits-logreg:certifiable=1:
    ``runs`` challenges of ``bases`` shared bases, each lie moving values by 10x the limit a
    challenge at ``epsilon`` states; the Verifier checks every subset, so a run is accepted only
    if no subset is rejected. Honest first (0 rejected expected).

        OMP_NUM_THREADS=1 python benchmarks/soundness.py --witness-runs 5
    """
    import numpy as np

    from protocol.sampling import SharedBaseDesign
    from protocol.tasks import load_task
    from protocol.witness import check_witnesses, witness_limit
    from protocol.witness_adversaries import WITNESS_ATTACKS, tamper_witnesses

    problem = load_task("digits-logreg:certifiable=1").certifiable()
    assert problem is not None
    out = []
    for kind in ("honest", *WITNESS_ATTACKS):
        accepted, rejected, subsets, moved = 0, 0, 0, 0.0
        for run_i in range(runs):
            seed = f"witness-soundness-{run_i}".encode().ljust(32, b"\0")
            design = SharedBaseDesign.saunshi(seed, problem.n, 0.5, 0.2, bases)
            masks = design.masks()
            limit = witness_limit(epsilon, problem.bound, design.rhos)
            theta = problem.witnesses(masks, design.seeds(), limit / 4)
            values = problem.outputs(theta)
            if kind != "honest":
                rng = np.random.default_rng(run_i)
                bad, lies = tamper_witnesses(kind, problem, theta, masks, values,
                                             shift=10 * limit, rng=rng)  # fmt: skip
                moved = max(moved, float(np.abs(lies - values).max()))
                theta, values = bad, lies
            check = check_witnesses(problem, theta, masks, values, limit)
            rejected += len(check.rejected)
            subsets += len(masks)
            accepted += int(not check.rejected)
        out.append({"adversary": kind, "runs": runs, "accepted": accepted,
                    "subsets_checked": subsets, "subsets_rejected": rejected,
                    "largest_value_lie": moved, "limit": limit})  # fmt: skip
    return out


if __name__ == "__main__":
    main()
