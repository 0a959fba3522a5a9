"""One verification, end to end, recorded as it goes.

See docs/protocol.md#two-message-protocol and docs/protocol.md#certificate.

The interactive protocol, top to bottom (:func:`run_verification`):

1. **commit**: the Prover's attribution g (its content hash) is fixed before anything else;
2. **size**: unless given, the sizes come from ε: a small local pilot (``pilot`` bases of the
   challenge's layout, trained here) gives the spread of the pair-sums and E r^2, and
   :func:`protocol.certificate.plan_certificate` picks the bases n and spot-checks k so that an
   honest g with err <= ε/2 is accepted with probability >= 1 - δ. A relative ε (a fraction of
   Var f) is turned into absolute units with a lower confidence bound on Var f from the same
   pilot (δ/4 of the failure budget), so it stays sound;
3. **challenge**: seed, layout, sizes, ε, δ, τ and a commitment to the secret spot-checks C,
   signed; the secret is on disk before the challenge leaves;
4. **response**: f on every subset of E, checked (shape, finite, [-b, b]);
5. **spot-checks**: C, whole pair-sum groups (a base and its partners) drawn uniformly,
   re-trained here and compared under CHECKEQUIV (tau);
6. **certificate**: :func:`protocol.decision.certify_challenge` on the response: m* corrupted
   groups from the passed checks, and the smaller of the checked groups' own bound and the
   robust bound on all of E; validity ``auto`` is ``clt`` where
   :func:`protocol.certificate.clt_refusal` allows it, else ``betting`` (said before the
   Prover trains); **decide** (:func:`protocol.decision.decide`): accept iff the certified
   ε is at most ε;
7. **verdict**: signed, recorded, posted.

The baselines (the non-interactive and the naive protocol, and the paper's residual estimator
with its threshold) live in :mod:`verifier_client.baselines`.

Failure kinds are kept apart: once the challenge is recorded, a Prover that misbehaves -- any
:class:`protocol.errors.VerificationError`: a reply that is not its wire model, a bad signature,
bad arrays, values out of range (and a spot-check mismatch, decided in step 6) -- gets an
**abort** with the error's ``reason``; the network or the Prover's infrastructure failing raises
:class:`~verifier_client.client.TransportError` and the record stays ``incomplete`` for
``verify --resume``, never an abort. (Before the challenge there is nothing to abort: such an
error is reported and the command exits 2.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from protocol.certificate import (
    Certificate,
    CertificatePlan,
    clt_fewest,
    clt_refusal,
    default_validity,
    group_subsets,
    pilot_figures,
    pilot_point,
    plan_certificate,
    upper_bias_coefficient,
    variance_lower_bound,
)
from protocol.checkequiv import EquivReport
from protocol.datamodel import Datamodel
from protocol.decision import Decision, abort_decision, certify_challenge, decide
from protocol.errors import BadResponseError, InvalidParameterError, VerificationError
from protocol.evaluation import evaluate_with_probes, run_task
from protocol.messages import Challenge, ResponseManifest, Verdict, commit_spot_checks
from protocol.sampling import Design, make_design, subsets_per_base
from protocol.signing import SignedMessage, public_key_hex, sign_message
from protocol.tasks import Task, TaskBase, load_task, spec_hash
from protocol.transcript import check_probes, spot_check
from protocol.witness import witness_limit
from verifier_client import routes
from verifier_client.baselines import LOOK_DELTA, LOOK_MAX_SHARE, first_look
from verifier_client.cancel import cancel_on_interrupt
from verifier_client.client import ProverClient, ProverRefused
from verifier_client.options import Options, Pilot, Sizes, protocol_name
from verifier_client.store import Record, VerifierStore

__all__ = ["Options", "Pilot", "Run", "Sizes", "run_verification", "train_local"]

Progress = Callable[[str, int, int], None]  # (phase, done, total), at every phase's start
Notify = Callable[[str], None]  # a sentence the user should read now (e.g. a reused attribution)
SIZING_MARGIN = 1.25  # the pilot's spread is itself an estimate: plan for 25 % more
DESIGN_LABELS = ("pilot", "challenge", "fresh")  # what a seed may fix: the Prover sees E anyway


def train_local(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """V's own training: values and CHECKEQUIV probes."""
    return evaluate_with_probes(task, masks, seeds)


def smallest_fitting(fits: Callable[[float], bool], start: float, steps: int) -> float | None:
    """The smallest epsilon (to 1 %) for which ``fits`` holds, ``fits`` growing with epsilon:
    from ``start``, doubled until it fits (at most ``steps`` times), then halved while it
    still fits (as often), then bisected. None if nothing up to start x 2^steps fits."""
    hi = start
    for _ in range(steps):
        if fits(hi):
            break
        hi *= 2
    else:
        return None
    lo = hi / 2
    for _ in range(steps):
        if not fits(lo):
            break
        hi, lo = lo, lo / 2
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def reachable_epsilon(
    bases_for: Callable[[float], int], bases: int, epsilon: float
) -> float | None:
    """The smallest epsilon (to 1 %) whose plan fits in ``bases`` bases, above ``epsilon`` (the
    one asked, which does not fit): what a cut plan can promise instead. None past 10^4 x."""

    def fits(e: float) -> bool:
        try:
            return bases_for(e) <= bases
        except InvalidParameterError:
            return False

    return smallest_fitting(fits, 2 * epsilon, 14)


def cut_note(source: str) -> str:
    """What a plan cut by a cap means, said in the text output as well as in --json."""
    return (f"plan cut: {source}; the certificate stays sound, but it will be wider than "
            "epsilon asks for, so an honest Prover may be aborted")  # fmt: skip


class Run:
    """The state of one verification: client, store, key, options, timers, counters."""

    def __init__(
        self,
        client: ProverClient,
        store: VerifierStore,
        key: Ed25519PrivateKey,
        opts: Options,
        url: str,
        progress: Progress | None,
        notify: Notify | None = None,
    ) -> None:
        self.client, self.store, self.key, self.opts, self.url = client, store, key, opts, url
        self.progress = progress or (lambda _s, _d, _t: None)
        self.notes: list[str] = []
        self.made: dict[str, Any] = {}  # the committed attribution: hash, method, trainings
        self._notify = notify or (lambda _m: None)
        self.times: dict[str, float] = {}
        self.local_trainings = 0
        self.device_class = ""  # the Prover's, from its signed response
        self._pilot: Pilot | None = None  # measured once (pilot), read by routes (held_pilot)
        self.routes: dict[str, Any] | None = None  # every route's plan (choose_route)

    def random(self, label: str, n: int) -> bytes:
        """``n`` bytes for ``label``: from ``seed`` for the design, from ``secrets_seed`` (tests
        only) for a secret (nonce, salt, spot-checks), else fresh (issue 21, item 15)."""
        seed = self.opts.seed if label in DESIGN_LABELS else self.opts.secrets_seed
        if seed is None:
            return os.urandom(n)
        return hashlib.sha256(seed + label.encode()).digest()[:n]

    def tick(self, phase: str, started: float) -> None:
        self.times[phase] = round(self.times.get(phase, 0.0) + time.perf_counter() - started, 3)

    def note(self, message: str) -> None:
        """Tell the user now (``notify``) and keep it with the result (``notes``)."""
        self.notes.append(message)
        self._notify(message)

    def train(self, task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64],
              phase: str) -> tuple[NDArray[np.float64], NDArray[np.float32]]:  # fmt: skip
        t0 = time.perf_counter()
        label = f"{phase.replace('_', '-')} (training here)"
        self.progress(label, 0, len(masks))
        out = run_task(task, masks, seeds, lambda done, total: self.progress(label, done, total))
        self.local_trainings += len(masks)
        self.tick(phase, t0)
        return out.values, out.probes

    # 1. commit: the attribution -------------------------------------------------------------
    def attribution(self, task_hash: str) -> tuple[str, Datamodel]:
        t0 = time.perf_counter()
        wanted = self.opts.attribution
        content = None if wanted in ("latest", "new") else wanted
        if wanted == "latest":
            content = self.client.latest_attribution(task_hash)
        requested = content is None
        if content is None:
            job = self.client.request_attribution(task_hash, self.opts.method, self.opts.budget)
            with cancel_on_interrupt(self.client, job.id, self.note):
                while job.status not in ("done", "failed", "cancelled"):
                    self.progress("attribution (Prover training)", job.done, job.total)
                    time.sleep(self.opts.poll_s)
                    job = self.client.job(job.id)
            if job.status != "done":
                raise ProverRefused(500, f"the Prover's attribution job failed: {job.error}")
            content = str(job.result)
        manifest, model = self.client.attribution(content)
        made = manifest.payload
        self.made = {"hash": content, "method": made.get("method"),
                     "trainings": made.get("trainings"), "new": requested}  # fmt: skip
        if wanted == "latest" and not requested:
            self.note(
                f"verifying the Prover's existing attribution {content[:16]} "
                f"({made.get('method')}, {int(made.get('trainings', 0)):,} trainings); "
                "--method and --budget apply only when it has none: pass --attribution new "
                "to have it compute a new one"
            )
        self.tick("attribution", t0)
        return content, model

    # 2. size: from epsilon ------------------------------------------------------------------
    @property
    def held_pilot(self) -> Pilot | None:
        """The pilot, if it has been trained (:meth:`pilot`); None before."""
        return self._pilot

    def pilot(self, task: TaskBase, model: Datamodel) -> Pilot:
        """The local pilot (trained once, shared by every route's plan): its values, the
        committed g's predictions on it, and epsilon in absolute units."""
        if self._pilot is not None:
            return self._pilot
        o = self.opts
        design = make_design(o.layout, self.random("pilot", 32), task.n_train, o.p, o.rho0,
                             o.pilot)  # fmt: skip
        masks = design.masks()
        t0 = time.perf_counter()
        values, _ = self.train(task, masks, design.seeds(), "pilot")
        seconds = (time.perf_counter() - t0) / max(1, len(masks))
        epsilon, var_lb = o.epsilon, None
        if o.relative:
            # the variance of f itself: the normal approximation unless a finite-sample
            # validity was asked for (then Maurer & Pontil's bound, valid but wide)
            var_validity: Literal["finite", "clt"] = (
                "finite" if o.validity in ("betting", "finite") else "clt"
            )
            lower = variance_lower_bound(values, o.delta / 4, validity=var_validity,
                                         bound=task.bound)  # fmt: skip
            var_lb = float(lower.mean() if o.aggregate == "mean" else lower.min())
            if var_lb <= 0:
                raise InvalidParameterError(
                    "the pilot cannot bound Var f away from 0: give epsilon in absolute units "
                    "or a larger --pilot"
                )
            epsilon = o.epsilon * var_lb
        self._pilot = Pilot(design, masks, values, model.predict(masks), epsilon, var_lb, seconds)
        return self._pilot

    def sizes(
        self, task: TaskBase, model: Datamodel, prover_cap: int, trusted: bool | None = None,
        quiet: bool = False, own: bool | None = None,
    ) -> Sizes:  # fmt: skip
        """The challenge's sizes (module doc). A plan above the allowed Prover trainings
        (``max_prover_trainings`` or the Prover's own limit) is cut to the allowance: the
        certificate stays sound at any size, only its width grows, and the record says so
        (and, unless ``quiet``, so does a note). ``trusted`` (default: the values are the
        Verifier's own, checking alone or the witness route): sized with m* = 0. ``own``
        (default: checking alone): the Verifier trains E itself, so only ``prover_cap`` (the
        protocol's limit) caps it, not ``max_prover_trainings``.
        (The pilot measures the spread with the committed g: a bad g inflates it, so a cheat
        is typically sized at the allowance and aborted there.)"""
        o = self.opts
        if trusted is None:
            trusted = o.protocol in ("noninteractive", "witness")
        if own is None:
            own = o.protocol == "noninteractive"
        delta = o.delta * 0.75 if o.relative else o.delta
        if not (o.relative or o.pairs_per_level is None or o.spot_checks is None):
            return Sizes(o.epsilon, delta, o.pairs_per_level or 0, o.spot_checks or 0, "given")
        pilot = self.pilot(task, model)
        epsilon, var_lb, trained = pilot.epsilon, pilot.var_lb, len(pilot.values)
        if o.pairs_per_level is not None and o.spot_checks is not None:
            return Sizes(epsilon, delta, o.pairs_per_level, o.spot_checks, "given", None, var_lb,
                         trained)  # fmt: skip
        sd, mse = pilot_figures(pilot.values, pilot.predictions, pilot.design, o.aggregate)
        per_base = subsets_per_base(o.layout)
        cap = prover_cap if own else min(o.max_prover_trainings, prover_cap)
        who = "trainings here" if own else "Prover trainings"
        clt_min = clt_fewest(o.p)
        if o.validity != "auto" or o.pairs_per_level is not None or clt_min * per_base > cap:
            clt_min = 0  # no raise (given, or not allowed): clt_refusal decides at the challenge

        def plan(at: float, assumed: float | None = None) -> CertificatePlan:
            return plan_certificate(
                epsilon, at, sd_pair_sum=SIZING_MARGIN * sd, mse=SIZING_MARGIN * mse,
                rhos=pilot.design.rhos, spot_fraction=o.spot_fraction, layout=o.layout,
                n_targets_split=task.n_targets if o.aggregate == "max" else 1,
                trusted=trusted, assumed_err=assumed,  # checking alone: sized for itself
            )  # fmt: skip

        looks_ok = own and o.layout == "shared-base" and o.pairs_per_level is None
        try:
            final = plan(delta * LOOK_DELTA[-1] if looks_ok else delta)
            n, asked, predicted = final.pairs_per_level, f"{final.n_subsets:,}", \
                final.predicted_width  # fmt: skip
        except InvalidParameterError:  # no size reaches epsilon with this spread
            n, asked, predicted = cap // per_base + 1, "more than any size", None
        source = "planner (pilot)"
        if o.pairs_per_level is not None:
            n, source = o.pairs_per_level, "given pairs; planner spot-checks"
        elif n * per_base > cap:
            n = max(2, cap // per_base)
            source = f"capped at {cap:,} {who} (the plan asked for {asked})"
            reach = reachable_epsilon(
                lambda e: plan_certificate(
                    e, delta, sd_pair_sum=SIZING_MARGIN * sd, mse=SIZING_MARGIN * mse,
                    rhos=pilot.design.rhos, spot_fraction=o.spot_fraction, layout=o.layout,
                    n_targets_split=task.n_targets if o.aggregate == "max" else 1,
                    trusted=trusted,
                ).pairs_per_level, n, epsilon,
            )  # fmt: skip
            if reach is not None:
                source += f"; at this size the plan reaches epsilon = {reach:.3g}"
            if not quiet:
                self.note(cut_note(source))
        if n < clt_min:
            # the plan assumed the normal approximation: give it the size it is allowed at
            n, source = clt_min, f"{source}; raised to {clt_min:,}, the fewest clt is allowed at"
        looks: tuple[int, ...] = ()
        chance: float | None = None
        if looks_ok and predicted is not None and n * per_base <= cap:
            # a first look where the expected trainings are least (baselines.first_look): an
            # attribution far better than epsilon stops there
            point, se = pilot_point(pilot.values, pilot.predictions, pilot.design, o.aggregate)
            first, chance = first_look(
                n, epsilon=epsilon, point=point, se=SIZING_MARGIN * se,
                sd=SIZING_MARGIN * sd, mse=SIZING_MARGIN * mse,
                delta_stat=delta * LOOK_DELTA[0] / 2 / (task.n_targets if o.aggregate == "max"
                                                       else 1),
                kappa=upper_bias_coefficient(np.asarray(pilot.design.rhos)), smallest=clt_min,
            )  # fmt: skip
            if first <= LOOK_MAX_SHARE * n:
                looks = (first, n)  # checking alone stops at the first look that certifies
            else:  # one look: all of delta on it
                chance = None
                with contextlib.suppress(InvalidParameterError):
                    n = max(plan(delta).pairs_per_level, clt_min)
        k = o.spot_checks if o.spot_checks is not None else \
            min(max(1, math.ceil(o.spot_fraction * n * per_base)), n * per_base)  # fmt: skip
        if trusted:
            k = 0  # the values are the Verifier's own (or each checked by its witness)
        elif o.spot_checks is None:
            # the certificate reads its trusted bound and SD caps from the checked bases with
            # clt only where clt_refusal allows it at their count too; below, those bounds
            # pay the range (protocol.certificate.certify), so check at least that many
            chosen = o.validity if o.validity != "auto" else default_validity(o.p, n)
            k_min = min(n, clt_fewest(o.p)) * per_base
            if chosen == "clt" and k < k_min:
                k = k_min
                source += (f"; spot-checks raised to {k_min // per_base:,} bases, the fewest "
                           "clt is allowed at on the checked bases")  # fmt: skip
        return Sizes(epsilon, delta, n, k, source, predicted, var_lb, trained, looks, chance)

    # 3. challenge ---------------------------------------------------------------------------
    def start(
        self, task: TaskBase, task_hash: str, content: str, sizes: Sizes
    ) -> tuple[Record, Challenge]:
        o = self.opts
        n = sizes.pairs_per_level
        shape = make_design(o.layout, bytes(32), task.n_train, o.p, o.rho0, n)
        n_subsets = len(shape)
        per_group = n_subsets // n
        # spot-checks are whole pair-sum groups (a base and its partners): the checked groups
        # are then the Verifier's own sample too (protocol.certificate, "Checked groups")
        k_groups = min(n, max(1, math.ceil(min(sizes.spot_checks, n_subsets) / per_group)))
        witness = o.protocol == "witness"  # every subset checked by its witness: no spot-checks
        if sizes.spot_checks == 0 or witness:
            k_groups = 0
        chooser = (
            secrets.SystemRandom()
            if o.secrets_seed is None
            else random.Random(self.random("spots", 16))  # noqa: S311 - tests only
        )
        groups = np.array(sorted(chooser.sample(range(n), k_groups)), dtype=np.int64)
        spots = [int(i) for i in group_subsets(shape, groups)]
        validity = self.validity_for(n)
        fewest = clt_fewest(o.p)
        if validity == "clt" and 0 < k_groups < min(n, fewest):
            self.note(
                f"only {k_groups:,} of the {n:,} bases are spot-checked, below {fewest:,}, the "
                "fewest at which clt may be used on them: their own bound and the spread caps "
                "then pay the whole value range, so the certificate will be wide; give "
                f"--spot-checks {fewest * per_group:,} or more, or leave it to the planner"
            )
        salt = self.random("salt", 32)
        challenge = Challenge(
            task_hash=task_hash,
            attribution_hash=content,
            p=o.p,
            rho0=o.rho0,
            pairs_per_level=sizes.pairs_per_level,
            challenge_seed=self.random("challenge", 32).hex(),
            spot_check_commitment=commit_spot_checks(spots, salt),
            epsilon=sizes.epsilon,
            delta=sizes.delta,
            bound=task.bound,
            tau=o.tau_for(task),
            estimator=o.estimator,
            nonce=self.random("nonce", 16).hex(),
            timestamp=int(time.time()),
            verifier_key=public_key_hex(self.key),
            prover_key=self.client.prover_key,
            layout=o.layout,
            aggregate=o.aggregate,
            validity=validity,
            witness_limit=(o.witness_limit or witness_limit(sizes.epsilon, task.bound, shape.rhos))
            if witness else None,
            epsilon_share=o.epsilon if o.relative else None,  # as typed, for the audit page
            delta_total=o.delta if sizes.delta != o.delta else None,
        )  # fmt: skip
        signed = sign_message(self.key, challenge)
        secret = {"spot_checks": spots, "salt": salt.hex(), "sizes": sizes.__dict__,
                  "routes": self.routes,
                  "requested": {"epsilon": o.epsilon, "delta": o.delta,
                                "relative": o.relative}}  # fmt: skip
        record = Record(
            id=challenge.nonce,
            prover_url=self.url,
            prover_key=self.client.prover_key or "",
            task_hash=task_hash,
            task_ref=o.task,
            attribution_hash=content,
            protocol=o.protocol,
            estimator=o.estimator,
            challenge_json=signed.model_dump_json(),
            secret_json=json.dumps(secret),
            prover_trainings=n_subsets,
        )
        self.store.add(record)  # the secret is on disk before the challenge leaves
        return record, challenge

    def choose_route(self, task: TaskBase, model: Datamodel, prover_cap: int) -> Sizes | None:
        """Plan every route from the pilot, pick ``auto``'s (or the forced one), say the plan in
        words and keep every route's cost for the record (:mod:`verifier_client.routes`).
        None when the sizes were given (no pilot: the route is as asked, ``auto`` interactive).
        """
        o = self.opts
        if not o.relative and o.pairs_per_level is not None and o.spot_checks is not None:
            if o.protocol == "auto":
                self.opts = replace(o, protocol="interactive")
            return None
        costs = routes.plan_routes(self, task, model, prover_cap)
        forced = o.protocol != "auto"
        chosen = next(c for c in costs if c.route == o.protocol) if forced else \
            routes.choose(costs)  # fmt: skip
        if chosen.sizes is None:
            raise InvalidParameterError(f"--protocol {o.protocol}: {chosen.why}")
        self.routes = {"chosen": chosen.route, "forced": forced,
                       "routes": [c.as_dict() for c in costs]}  # fmt: skip
        self.note(routes.plan_sentence(chosen, costs, forced))
        if not chosen.reaches:
            self.note(cut_note(chosen.sizes.source))
        self.opts = replace(o, protocol=protocol_name(chosen.route))
        return chosen.sizes

    def reach(self, task: TaskBase, model: Datamodel, prover_cap: int) -> dict[str, Any]:
        """Plan only (``reach_trainings``): for each route, the smallest epsilon (absolute, to
        1 %) whose plan fits within that many trainings here beyond the pilot (checking alone:
        both its looks, its worst case) and is not cut by a Prover or protocol cap, with that
        plan's cost; found by bisection on the same planner ``choose_route`` uses (its cost
        falls as epsilon grows). Scale: the pilot's mean Var f (a point estimate)."""
        budget = self.opts.reach_trainings or 0
        pilot = self.pilot(task, model)
        var = np.var(pilot.values, axis=0, ddof=1)
        scale = float(var.mean() if self.opts.aggregate == "mean" else var.max())
        scale = scale if math.isfinite(scale) and scale > 0 else 1.0

        def plan_at(epsilon: float) -> dict[str, routes.RouteCost]:
            self._pilot = replace(pilot, epsilon=epsilon)
            try:
                return {c.route: c for c in routes.plan_routes(self, task, model, prover_cap)}
            finally:
                self._pilot = pilot

        def spent(c: routes.RouteCost) -> float:
            return float(c.worst) if c.route == "noninteractive" and c.worst else \
                c.verifier_trainings  # fmt: skip

        found: dict[str, Any] = {}
        for route in routes.ROUTES:

            def fits(epsilon: float, route: str = route) -> bool:
                try:
                    c = plan_at(epsilon)[route]
                except InvalidParameterError:
                    return False
                return c.sizes is not None and c.reaches and spent(c) <= budget

            if not any(c.route == route and c.sizes is not None for c in
                       plan_at(scale).values()):  # fmt: skip
                found[route] = None  # not offered (the witness route on most tasks)
                continue
            hi = smallest_fitting(fits, scale, 40)  # up to 2^40 x Var f either way
            if hi is None:
                found[route] = None
                continue
            c = plan_at(hi)[route]
            found[route] = {"epsilon": hi, "share_of_var_f": hi / scale,
                            "verifier_trainings": spent(c),
                            "prover_trainings": c.prover_trainings,
                            "seconds": spent(c) * pilot.seconds_per_training}  # fmt: skip
        reached = [r for r in found if found[r] is not None]
        best = min(reached, key=lambda r: (found[r]["epsilon"], routes.TIE_ORDER.index(r)),
                   default=None)  # fmt: skip
        return {"plan_only": True, "task": task.name, "aggregate": self.opts.aggregate,
                "delta": self.opts.delta, "trainings_here": budget, "var_f_pilot": scale,
                "pilot_trainings": len(pilot.values), "best": best, "reach": found,
                "notes": self.notes}  # fmt: skip

    def validity_for(self, n: int) -> Literal["betting", "clt", "finite"]:
        """The challenge's validity: as asked, or for ``auto`` clt where it is allowed at this
        p and n (:func:`protocol.certificate.clt_refusal`), else betting, saying why now."""
        o = self.opts
        if o.validity in ("betting", "clt", "finite"):
            if o.validity == "clt" and (why := clt_refusal(o.p, n)) is not None:
                raise InvalidParameterError(why)
            return o.validity
        chosen = default_validity(o.p, n)
        if chosen != "clt":
            self.note(
                f"certificate: betting (sound at every p, but it pays for values an unseen rare "
                f"event could carry, so it is wide at this size): {clt_refusal(o.p, n)}"
            )
        return chosen

    def send(self, record: Record) -> str:
        signed = SignedMessage.model_validate_json(record.challenge_json)
        try:
            sid = self.client.post_challenge(signed).session_id
        except ProverRefused as exc:
            if exc.status != 409:
                raise
            sid = self._find_session(signed.digest)  # sent before a crash: find it
        self.store.update(record.id, prover_session=sid)
        return sid

    def _find_session(self, digest: str) -> str:
        for row in self.client.sessions(self.key):
            if row.challenge_digest == digest:
                return row.session_id
        raise ProverRefused(409, "the challenge's nonce was used but no session carries it")

    def wait(self, sid: str) -> None:
        """Poll the session until its response is ready. A session cancelled before (Ctrl-C,
        ``vda-verifier cancel``) is queued again; Ctrl-C here cancels its job and one cancelled
        meanwhile stops the run: the record stays incomplete either way (``--resume``)."""
        t0 = time.perf_counter()
        deadline = time.time() + self.opts.timeout_s
        doc = self.client.session(sid)
        if doc.status == "cancelled":
            self.client.resume_job(doc.job.id)
            self.note(f"the Prover's job {doc.job.id} had been cancelled: queued again")
        hint = f"; `vda-verifier verify --resume {sid}` restarts it"
        with cancel_on_interrupt(self.client, doc.job.id, self.note, hint):
            while True:
                doc = self.client.session(sid)
                self.progress("challenge (Prover training)", doc.job.done, doc.job.total)
                if doc.status in ("ready", "decided"):
                    break
                if doc.status == "failed" or doc.job.status == "failed":
                    raise ProverRefused(500, f"the Prover's training failed: {doc.job.error}")
                if doc.status == "cancelled":
                    raise ProverRefused(409, f"the Prover's job {doc.job.id} was cancelled{hint}")
                if time.time() > deadline:
                    raise ProverRefused(504, "the Prover did not finish within the timeout")
                time.sleep(self.opts.poll_s)
        self.tick("prover_training", t0)

    # 4. response ----------------------------------------------------------------------------
    def check_response(
        self, task: Task, design: Design, sid: str, record: Record
    ) -> tuple[
        SignedMessage | None, NDArray[np.float64], NDArray[np.float32], VerificationError | None
    ]:
        """Download and check the response; the last item is why it is bad (None if good)."""
        t0 = time.perf_counter()
        self.progress("download", 0, 1)
        signed: SignedMessage | None = None
        empty = (np.zeros((0, 0)), np.zeros((0, 0), dtype=np.float32))
        try:
            signed, manifest = self.client.response(sid)
            want = SignedMessage.model_validate_json(record.challenge_json).digest
            if manifest.challenge_digest != want:
                raise BadResponseError("the response answers another challenge")
            values = self.client.values(manifest.values, (len(design), task.n_targets),
                                        task.bound)  # fmt: skip
            probes = check_probes(self.client.array(manifest.probes, (len(design), None)),
                                  len(design))  # fmt: skip
        except VerificationError as exc:  # the Prover misbehaved: an abort with its reason
            return signed, *empty, exc
        finally:
            self.tick("download", t0)
            self.progress("download", 1, 1)
        hashes = {"values": manifest.values.sha256, "probes": manifest.probes.sha256}
        self.store.update(
            record.id, response_json=signed.model_dump_json(), array_hashes_json=json.dumps(hashes)
        )
        self.device_class = manifest.device_class
        return signed, values, probes, None

    # 5. spot-checks -------------------------------------------------------------------------
    def spot_check(self, task: Task, design: Design, spots: list[int],
                   values: NDArray[np.float64], probes: NDArray[np.float32],
                   tau: float) -> EquivReport:  # fmt: skip
        """Re-train the secret spot-checks here and compare them under the challenge's tau
        (:func:`protocol.transcript.spot_check`, the audit's own)."""

        def train(
            masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
        ) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
            return self.train(task, masks, seeds, "spot_checks")

        return spot_check(design, spots, values, probes, tau, train)

    # 6. certificate -------------------------------------------------------------------------
    def certificate(self, challenge: Challenge, task: Task, model: Datamodel, design: Design,
                    values: NDArray[np.float64], spots: list[int]) -> Certificate:  # fmt: skip
        t0 = time.perf_counter()
        self.progress("certificate", 0, 1)
        cert = certify_challenge(challenge, task.bound, model, design, values, spots)
        self.tick("certificate", t0)
        self.progress("certificate", 1, 1)
        return cert

    # 7. verdict -----------------------------------------------------------------------------
    def finish(
        self, record: Record, decision: Decision, sid: str | None, response: SignedMessage | None
    ) -> dict[str, Any]:
        secret = json.loads(record.secret_json)
        verdict_json = None
        if sid is not None and response is None and decision.reason == "malformed_response":
            digest = SignedMessage.model_validate_json(record.challenge_json).digest
            response = self.client.response_to_sign(sid, digest)  # an abort signed and posted
        if sid is not None and response is not None:
            challenge = SignedMessage.model_validate_json(record.challenge_json)
            verdict = Verdict(
                session_id=sid,
                challenge_digest=challenge.digest,
                response_digest=response.digest,
                verdict=decision.verdict,
                reason=decision.reason,
                figures=decision.figures,
                spot_check_indices=tuple(secret["spot_checks"]),
                salt=secret["salt"],
                timestamp=int(time.time()),
            )
            verdict_json = sign_message(self.key, verdict).model_dump_json()
        cert = decision.certificate.as_dict() if decision.certificate is not None else None
        # Decided and signed first (nothing is lost on a crash), delivered after: a verdict
        # recorded but not posted is re-posted by --resume (post_verdict below).
        self.store.update(
            record.id,
            status="decided",
            verdict=decision.verdict,
            reason=decision.reason,
            detail=decision.detail or None,
            figures_json=json.dumps(decision.figures),
            certificate_json=json.dumps(cert) if cert is not None else None,
            verdict_json=verdict_json,
            times_json=json.dumps(self.times),
            local_trainings=self.local_trainings,
        )
        if verdict_json is not None and sid is not None:
            t0 = time.perf_counter()
            post_verdict(self.client, self.store, record.id, sid, verdict_json)
            self.tick("post_verdict", t0)
            self.store.update(record.id, times_json=json.dumps(self.times))
        out = result_of(self.store, record.id, self.client)
        return out | {"notes": list(self.notes), "attribution": self.made or None}


def post_verdict(
    client: ProverClient, store: VerifierStore, record_id: str, sid: str, verdict_json: str
) -> None:
    """Deliver a recorded verdict and mark it delivered, with the log's signed tree head as it
    stands after the verdict (kept so that a later audit can check the log never forgot this
    session; a Prover without a log answers 404 and nothing is kept). The Prover answers 200
    to the same signed verdict posted again; 409 means it holds a *different* verdict for the
    session, which is an error to report, not a delivery."""
    try:
        client.post_verdict(sid, SignedMessage.model_validate_json(verdict_json))
    except ProverRefused as exc:
        if exc.status == 409:
            raise ProverRefused(409, f"the Prover holds another verdict for {sid}: {exc}") from None
        raise
    head: str | None = None
    try:
        head = client.log_head()[0].model_dump_json()
    except ProverRefused as exc:
        if exc.status != 404:
            raise
    store.update(record_id, posted_at=time.time(), log_head_json=head)


def _witness(
    run: Run, record: Record, challenge: Challenge, task: TaskBase, model: Datamodel,
    design: Design, response: SignedMessage | None, values: NDArray[np.float64],
) -> Decision:  # fmt: skip
    """The witness route's check and decision (:mod:`verifier_client.witness`)."""
    from verifier_client import witness as route_module

    assert response is not None  # noqa: S101 - check_response returned no error
    t0 = time.perf_counter()
    manifest = ResponseManifest.model_validate(response.payload)
    try:
        route = route_module.check_route(run.client, challenge, manifest, task, design, values)
    except VerificationError as exc:
        return abort_decision(exc, epsilon=challenge.epsilon, delta=challenge.delta)
    run.tick("witness_check", t0)
    run.store.update(record.id, spot_json=json.dumps({"witness": route.figures()}))
    return route_module.witness_decision(challenge, task, model, design, route)


def result_of(store: VerifierStore, record_id: str, client: ProverClient | None) -> dict[str, Any]:
    """The recorded result, with the top-level keys users read: verdict, epsilon, delta,
    certified_epsilon, aggregate, certificate (the parts), sizes."""
    row = store.get(record_id)
    if row is None:
        raise InvalidParameterError(f"no recorded verification {record_id!r}")
    out = row.as_dict()
    secret = json.loads(row.secret_json or "{}")
    requested = secret.get("requested", {})
    cert = out.get("certificate")
    out |= {
        "epsilon": requested.get("epsilon", out["figures"].get("epsilon")),
        "epsilon_absolute": out["figures"].get("epsilon"),
        "relative": requested.get("relative", False),
        "delta": requested.get("delta", out["figures"].get("delta")),
        "certified_epsilon": cert.get("certified_epsilon") if cert else None,
        "aggregate": cert.get("aggregate") if cert else None,
        "sizes": secret.get("sizes"),
        "routes": secret.get("routes"),
    }
    if client is not None:
        out |= {"bytes_received": client.bytes_received, "bytes_sent": client.bytes_sent}
    return out


def run_verification(
    client: ProverClient,
    store: VerifierStore,
    key: Ed25519PrivateKey,
    opts: Options,
    url: str,
    progress: Progress | None = None,
    resume: str | None = None,
    notify: Notify | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume``, finish) one verification; returns the recorded result.

    ``progress(phase, done, total)`` is called when each phase starts and as it advances;
    ``notify(sentence)`` with what the user should know now (kept in the result's ``notes``)."""
    from verifier_client import baselines

    if opts.protocol == "witness" and opts.spot_checks is None:
        opts = replace(opts, spot_checks=0)  # the witness route draws no spot-checks
    if resume is None:
        opts.validate()  # before any traffic: a bad option is the user's error, not the Prover's
    if client.key is None:
        client.key = key  # requests are signed with the Verifier's key
    run = Run(client, store, key, opts, url, progress, notify)
    if notify is not None:
        told: list[str] = []

        def once(message: str) -> None:  # the first wait for a start-up check, not each retry
            if not told:
                told.append(message)
                notify("the Prover is still checking the task at start-up: waiting for it")

        client.on_wait = once
    client.info()
    record: Record | None = None
    if resume is not None:
        record = store.get(resume) or next(
            (r for r in store.all() if r.prover_session == resume), None
        )
        if record is None:
            raise InvalidParameterError(f"no recorded verification {resume!r}")
        if record.status == "decided":
            if record.verdict_json and record.prover_session and record.posted_at is None:
                post_verdict(client, store, record.id, record.prover_session, record.verdict_json)
            return result_of(store, record.id, client)
        opts = replace(opts, task=record.task_ref, protocol=protocol_name(record.protocol),
                       estimator=record.estimator, attribution=record.attribution_hash)  # fmt: skip
        run.opts = opts
    task = load_task(opts.task)
    task_hash = spec_hash(task)
    client.task_entry(task_hash)  # the Prover must serve exactly this task
    opts.validate()
    # 1. commit
    if record is None:
        content, model = run.attribution(task_hash)
    else:
        content = record.attribution_hash
        _, model = client.attribution(content)
    if opts.reach_trainings is not None:  # plan only: what each route reaches at a budget
        return run.reach(task, model, client.info().limits.max_subsets)
    # 2. the route and its sizes, said before the Prover trains
    planned: Sizes | None = None
    if record is None and opts.protocol != "naive" and opts.estimator == "gap":
        planned = run.choose_route(task, model, client.info().limits.max_subsets)
        opts = run.opts
    elif opts.protocol == "auto":
        opts = run.opts = replace(opts, protocol="interactive")
    if opts.protocol not in ("interactive", "witness"):
        return baselines.run(run, task, task_hash, content, model, record, planned)
    # 3. challenge
    if record is None:
        cap = client.info().limits.max_subsets
        sizes = planned if planned is not None else run.sizes(task, model, cap)
        record, challenge = run.start(task, task_hash, content, sizes)
    else:
        challenge = Challenge.model_validate(
            SignedMessage.model_validate_json(record.challenge_json).payload
        )
    design = challenge.design(task.n_train)
    spots = list(json.loads(record.secret_json)["spot_checks"])
    # 4. response (a misbehaving Prover is aborted with the reason; a transport error leaves
    # the record incomplete for --resume)
    sid = record.prover_session
    try:
        sid = sid or run.send(record)
        run.wait(sid)
    except VerificationError as exc:
        decision = abort_decision(exc, epsilon=challenge.epsilon, delta=challenge.delta)
        return run.finish(record, decision, sid, None)
    response, values, probes, bad = run.check_response(task, design, sid, record)
    if bad is not None:
        decision = abort_decision(bad, epsilon=challenge.epsilon, delta=challenge.delta)
        return run.finish(record, decision, sid, response)
    if opts.protocol == "witness":  # 5-6. every subset's witness instead of spot-checks
        return run.finish(record, _witness(run, record, challenge, task, model, design, response,
                                           values), sid, response)  # fmt: skip
    # 5. spot-checks
    report = run.spot_check(task, design, spots, values, probes, challenge.tau)
    store.update(record.id, spot_json=json.dumps(report.as_dict() | {"device_class": {
        "prover": run.device_class, "verifier": task.device_class}}))  # fmt: skip
    if opts.estimator == "residual":  # the paper's estimator: a baseline with a threshold
        decision = baselines.residual_decision(run, task, model, design, values, report)
        return run.finish(record, decision, sid, response)
    # 6. certificate and decision
    cert = run.certificate(challenge, task, model, design, values, spots) \
        if report.all_match else None  # fmt: skip
    decision = decide(epsilon=challenge.epsilon, delta=challenge.delta, certificate=cert,
                      spot=report)  # fmt: skip
    # 7. verdict
    return run.finish(record, decision, sid, response)
