"""One verification, end to end (PROTOCOL.md section 4), recorded as it goes.

``interactive`` (the product): commit -> challenge -> response -> spot-checks -> estimate -> decide
-> verdict. ``noninteractive`` (baseline): V trains E itself, no challenge. ``naive`` (baseline,
insecure, fooled by w/2): V trains fresh samples and accepts iff MSE-hat <= epsilon.

Failure kinds are kept apart: a Prover that misbehaves (bad signature, bad arrays, values out of
range, spot-check mismatch) gets an **abort** verdict with its reason; the network or the
Prover's infrastructure failing raises :class:`~verifier_client.client.TransportError` and the
record stays ``incomplete`` for ``verify --resume``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from protocol.checkequiv import EquivReport, check_equiv, explain
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, ShapeError
from protocol.evaluation import evaluate_with_probes
from protocol.messages import Challenge, Verdict, commit_spot_checks
from protocol.residual import estimate_gap, estimate_residual
from protocol.sampling import ChallengeDesign, sample_masks, training_seeds
from protocol.signing import BadSignatureError, SignedMessage, public_key_hex, sign_message
from protocol.tasks import Task, TaskBase, load_task, spec_hash
from verifier_client.client import ProverClient, ProverRefused
from verifier_client.decision import Decision, decide
from verifier_client.store import Record, VerifierStore

__all__ = ["Options", "run_verification", "train_local"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Options:
    """What to verify and how much to spend."""

    task: str
    epsilon: float
    delta: float = 0.05
    protocol: str = "interactive"
    estimator: str = "gap"
    pairs_per_level: int = 2000
    spot_checks: int = 32
    fresh_samples: int = 0
    tau: float | None = None  # CHECKEQUIV tolerance; None: the task's; never below the task's
    rho0: float = 0.2
    p: float = 0.5
    honest_err: float = 0.0
    attribution: str = "latest"
    method: str = "ridge"
    budget: int = 2000
    poll_s: float = 0.25
    timeout_s: float = 3600.0
    seed: bytes | None = None  # tests only: derive every secret from it (default: os.urandom)

    def validate(self) -> None:
        if self.protocol not in ("interactive", "noninteractive", "naive"):
            raise InvalidParameterError(f"unknown protocol {self.protocol!r}")
        if self.estimator not in ("gap", "residual"):
            raise InvalidParameterError(f"unknown estimator {self.estimator!r}; gap or residual")
        if not self.epsilon > 0 or not 0 < self.delta < 1:
            raise InvalidParameterError("need epsilon > 0 and delta in (0, 1)")
        if not 0 <= self.honest_err < self.epsilon:
            raise InvalidParameterError("honest_err must lie in [0, epsilon)")
        if self.pairs_per_level < 2 or self.spot_checks < 0 or self.fresh_samples < 0:
            raise InvalidParameterError("need >= 2 pairs per level and non-negative sample sizes")
        if self.protocol == "naive" and self.fresh_samples < 2:
            raise InvalidParameterError("the naive protocol needs --fresh >= 2")
        if self.estimator == "residual" and self.protocol != "naive" and self.fresh_samples < 2:
            raise InvalidParameterError("the residual estimator needs --fresh >= 2 samples")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau >= 0):
            raise InvalidParameterError(f"tau must be finite and >= 0; got {self.tau!r}")

    def tau_for(self, task: TaskBase) -> float:
        """The CHECKEQUIV tolerance of a challenge: the task's declared tau, or a larger one the
        Verifier asks for; a smaller one is refused (honest runs could then differ by more)."""
        if self.tau is None:
            return task.tau
        if self.tau < task.tau:
            raise InvalidParameterError(
                f"--tau {self.tau:g} is below the tau = {task.tau:g} task {task.name!r} declares: "
                "honest runs may differ by that much"
            )
        return self.tau

    @property
    def threshold(self) -> float:
        return (self.epsilon + self.honest_err) / 2.0


def train_local(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """V's own training: values and CHECKEQUIV probes."""
    return evaluate_with_probes(task, masks, seeds)


class _Run:
    def __init__(
        self,
        client: ProverClient,
        store: VerifierStore,
        key: Ed25519PrivateKey,
        opts: Options,
        url: str,
        progress: Progress | None,
    ) -> None:
        self.client, self.store, self.key, self.opts, self.url = client, store, key, opts, url
        self.progress = progress or (lambda _s, _d, _t: None)
        self.times: dict[str, float] = {}
        self.local_trainings = 0
        self.device_class = ""  # the Prover's, from its signed response

    def _random(self, label: str, n: int) -> bytes:
        if self.opts.seed is None:
            return os.urandom(n)
        return hashlib.sha256(self.opts.seed + label.encode()).digest()[:n]

    def _tick(self, phase: str, started: float) -> None:
        self.times[phase] = round(self.times.get(phase, 0.0) + time.perf_counter() - started, 3)

    # -- commit: the attribution ------------------------------------------------------------
    def attribution(self, task_hash: str) -> tuple[str, Datamodel]:
        t0 = time.perf_counter()
        content = None if self.opts.attribution == "latest" else self.opts.attribution
        if content is None:
            content = self.client.latest_attribution(task_hash)
        if content is None:
            job = self.client.request_attribution(task_hash, self.opts.method, self.opts.budget)
            while job["status"] not in ("done", "failed"):
                self.progress("attribution", job["done"], job["total"])
                time.sleep(self.opts.poll_s)
                job = self.client.job(job["id"])
            if job["status"] == "failed":
                raise ProverRefused(500, f"the Prover's attribution job failed: {job['error']}")
            content = str(job["result"])
        _, model = self.client.attribution(content)
        self._tick("attribution", t0)
        return content, model

    # -- the interactive protocol -----------------------------------------------------------
    def start(self, task: TaskBase, task_hash: str, content: str) -> Record:
        o = self.opts
        n_subsets = 6 * o.pairs_per_level
        k = min(o.spot_checks, n_subsets)
        chooser = (
            secrets.SystemRandom() if o.seed is None else random.Random(self._random("spots", 16))  # noqa: S311 - tests only
        )
        spots = sorted(chooser.sample(range(n_subsets), k))
        salt = self._random("salt", 32)
        challenge = Challenge(
            task_hash=task_hash,
            attribution_hash=content,
            p=o.p,
            rho0=o.rho0,
            pairs_per_level=o.pairs_per_level,
            challenge_seed=self._random("challenge", 32).hex(),
            spot_check_commitment=commit_spot_checks(spots, salt),
            epsilon=o.epsilon,
            delta=o.delta,
            bound=task.bound,
            tau=o.tau_for(task),
            estimator=o.estimator,
            nonce=self._random("nonce", 16).hex(),
            timestamp=int(time.time()),
            verifier_key=public_key_hex(self.key),
        )
        signed = sign_message(self.key, challenge)
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
            secret_json=json.dumps({"spot_checks": spots, "salt": salt.hex()}),
            prover_trainings=n_subsets,
        )
        self.store.add(record)  # the secret is on disk before the challenge leaves
        return record

    def send(self, record: Record) -> str:
        signed = SignedMessage.model_validate_json(record.challenge_json)
        try:
            sid = str(self.client.post_challenge(signed)["session_id"])
        except ProverRefused as exc:
            if exc.status != 409:
                raise
            sid = self._find_session(signed.digest)  # sent before a crash: find it
        self.store.update(record.id, prover_session=sid)
        return sid

    def _find_session(self, digest: str) -> str:
        for row in self.client.sessions(self.key):
            if row["challenge_digest"] == digest:
                return str(row["session_id"])
        raise ProverRefused(409, "the challenge's nonce was used but no session carries it")

    def wait(self, sid: str) -> None:
        t0 = time.perf_counter()
        deadline = time.time() + self.opts.timeout_s
        while True:
            doc = self.client.session(sid)
            self.progress("prover training", doc["job"]["done"], doc["job"]["total"])
            if doc["status"] in ("ready", "decided"):
                break
            if doc["status"] == "failed" or doc["job"]["status"] == "failed":
                raise ProverRefused(500, f"the Prover's training failed: {doc['job']['error']}")
            if time.time() > deadline:
                raise ProverRefused(504, "the Prover did not finish within the timeout")
            time.sleep(self.opts.poll_s)
        self._tick("prover_training", t0)

    def check_response(
        self, task: Task, design: ChallengeDesign, sid: str, record: Record
    ) -> tuple[SignedMessage | None, NDArray[np.float64], NDArray[np.float32], str | None]:
        """Download and check the response; the last item is why it is bad (None if good)."""
        t0 = time.perf_counter()
        signed: SignedMessage | None = None
        empty = (np.zeros((0, 0)), np.zeros((0, 0), dtype=np.float32))
        try:
            signed, manifest = self.client.response(sid)
            want = SignedMessage.model_validate_json(record.challenge_json).digest
            if manifest.challenge_digest != want:
                raise ShapeError("the response answers another challenge")
            values = self.client.array(manifest.values).astype(np.float64)
            probes = self.client.array(manifest.probes).astype(np.float32)
            shape = (len(design), task.n_targets)
            if values.shape != shape or len(probes) != len(design):
                raise ShapeError(f"values of shape {values.shape}, expected {shape}")
            if not np.all(np.isfinite(values)) or np.abs(values).max() > task.bound:
                raise ShapeError("values are not finite or lie outside [-b, b]")
        except (BadSignatureError, ShapeError) as exc:
            return signed, *empty, str(exc)
        finally:
            self._tick("download", t0)
        hashes = {"values": manifest.values.sha256, "probes": manifest.probes.sha256}
        self.store.update(
            record.id, response_json=signed.model_dump_json(), array_hashes_json=json.dumps(hashes)
        )
        self.device_class = manifest.device_class
        return signed, values, probes, None

    def spot_check(
        self,
        task: Task,
        design: ChallengeDesign,
        spots: list[int],
        values: NDArray[np.float64],
        probes: NDArray[np.float32],
        tau: float,
    ) -> EquivReport:
        """Re-train the secret spot-checks here and compare them under the challenge's tau."""
        t0 = time.perf_counter()
        idx = np.array(spots, dtype=np.int64)
        masks = np.stack([design.masks(int(i), int(i) + 1)[0] for i in idx])
        seeds = np.concatenate([design.seeds(int(i), int(i) + 1) for i in idx])
        local_v, local_p = train_local(task, masks, seeds)
        self.local_trainings += len(idx)
        report = check_equiv(values[idx], probes[idx], local_v, local_p, tau)
        self._tick("spot_checks", t0)
        return report

    def fresh(self, task: Task, model: Datamodel, count: int) -> NDArray[np.float64]:
        t0 = time.perf_counter()
        seed = self._random("fresh", 32)
        masks = sample_masks(seed, task.n_train, self.opts.p, range(count), domain="fresh")
        values, _ = train_local(
            task, masks, training_seeds(seed, range(count), domain="fresh-seed")
        )
        self.local_trainings += count
        self._tick("fresh_samples", t0)
        return np.asarray(model.mse(masks, values))

    def statistic(
        self, task: Task, model: Datamodel, design: ChallengeDesign, values: NDArray[np.float64]
    ) -> tuple[float, dict[str, float]]:
        t0 = time.perf_counter()
        conf = 1 - self.opts.delta
        if self.opts.estimator == "gap":
            est = estimate_gap(values, model.predict(design.masks()), design, confidence=conf)
            figures = {
                "gap_mean": float(est.gap.mean()),
                "gap_max": float(est.gap.max()),
                "gap_ci_high_max": float(est.ci_high.max()),
                "mse_mean": float(est.mse.mean()),
            }
            self._tick("estimate", t0)
            return float(est.gap.max()), figures
        res = estimate_residual(values, design, confidence=conf)
        self._tick("estimate", t0)
        mse = self.fresh(task, model, self.opts.fresh_samples)
        diff = mse - res.residual
        return float(diff.max()), {
            "residual_mean": float(res.residual.mean()),
            "residual_ci_low_min": float(res.ci_low.min()),
            "mse_mean": float(mse.mean()),
            "mse_minus_residual_max": float(diff.max()),
        }

    def finish(
        self, record: Record, decision: Decision, sid: str | None, response: SignedMessage | None
    ) -> dict[str, Any]:
        secret = json.loads(record.secret_json)
        verdict_json = None
        if sid is not None and response is not None:
            challenge = SignedMessage.model_validate_json(record.challenge_json)
            verdict = Verdict(
                session_id=sid,
                challenge_digest=challenge.digest,
                response_digest=response.digest,
                verdict=decision.verdict,  # type: ignore[arg-type]
                reason=decision.reason,
                figures=decision.figures,
                spot_check_indices=tuple(secret["spot_checks"]),
                salt=secret["salt"],
                timestamp=int(time.time()),
            )
            verdict_json = sign_message(self.key, verdict).model_dump_json()
        self.store.update(
            record.id,
            status="decided",
            verdict=decision.verdict,
            reason=decision.reason,
            detail=decision.detail or None,
            figures_json=json.dumps(decision.figures),
            verdict_json=verdict_json,
            times_json=json.dumps(self.times),
            local_trainings=self.local_trainings,
        )
        if verdict_json is not None and sid is not None:
            t0 = time.perf_counter()
            try:
                self.client.post_verdict(sid, SignedMessage.model_validate_json(verdict_json))
            except ProverRefused as exc:
                if exc.status != 409:  # 409: already posted (a resumed run)
                    raise
            self._tick("post_verdict", t0)
            self.store.update(record.id, times_json=json.dumps(self.times))
        row = self.store.get(record.id)
        assert row is not None  # noqa: S101
        sizes = {
            "pairs_per_level": self.opts.pairs_per_level,
            "spot_checks": self.opts.spot_checks,
            "fresh_samples": self.opts.fresh_samples,
        }
        guarantee = (
            "insecure baseline (MSE only; fooled by w/2)"
            if self.opts.protocol == "naive"
            else "normal approximation at the chosen sizes, confidence 1 - delta; "
            "`plan` gives the sizes with finite-sample guarantees"
        )
        return (
            row.as_dict()
            | {"sizes": sizes, "guarantee": guarantee}
            | {
                "bytes_received": self.client.bytes_received,
                "bytes_sent": self.client.bytes_sent,
            }
        )


def run_verification(
    client: ProverClient,
    store: VerifierStore,
    key: Ed25519PrivateKey,
    opts: Options,
    url: str,
    progress: Progress | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume``, finish) one verification; returns the recorded result."""
    if resume is None:
        opts.validate()  # before any traffic: a bad option is the user's error, not the Prover's
    run = _Run(client, store, key, opts, url, progress)
    client.info()
    if resume is not None:
        record = store.get(resume) or next(
            (r for r in store.all() if r.prover_session == resume), None
        )
        if record is None:
            raise InvalidParameterError(f"no recorded verification {resume!r}")
        if record.status == "decided":
            return record.as_dict()
        opts = Options(
            **{
                **opts.__dict__,
                "task": record.task_ref,
                "protocol": record.protocol,
                "estimator": record.estimator,
                "attribution": record.attribution_hash,
            }
        )
        run.opts = opts
    task = load_task(opts.task)
    task_hash = spec_hash(task)
    client.task_entry(task_hash)  # the Prover must serve exactly this task
    opts.validate()
    if resume is None:
        content, model = run.attribution(task_hash)
    else:
        content = record.attribution_hash
        _, model = client.attribution(content)
    if opts.protocol == "naive":
        return _naive(run, task, task_hash, content, model)
    if resume is None:
        record = run.start(task, task_hash, content)
    challenge = Challenge.model_validate(
        SignedMessage.model_validate_json(record.challenge_json).payload
    )
    design = challenge.design(task.n_train)
    spots = list(json.loads(record.secret_json)["spot_checks"])
    if opts.protocol == "noninteractive":
        t0 = time.perf_counter()
        values, _ = train_local(task, design.masks(), design.seeds())
        run.local_trainings += len(design)
        run._tick("local_training", t0)
        store.update(record.id, prover_trainings=0)
        stat, figs = run.statistic(task, model, design, values)
        decision = decide(
            threshold=opts.threshold,
            spot_mismatches=0,
            spot_checks=0,
            statistic=stat,
            extra=figs,
        )
        return run.finish(record, decision, None, None)
    sid = record.prover_session or run.send(record)
    run.wait(sid)
    response, values, probes, bad = run.check_response(task, design, sid, record)
    if bad is not None:
        decision = decide(
            threshold=opts.threshold,
            spot_mismatches=0,
            spot_checks=len(spots),
            statistic=float("nan"),
            bad_response=bad,
        )
        return run.finish(record, decision, sid, response)
    report = run.spot_check(task, design, spots, values, probes, challenge.tau)
    store.update(record.id, spot_json=json.dumps(report.as_dict() | {"device_class": {
        "prover": run.device_class, "verifier": task.device_class}}))  # fmt: skip
    stat, figs = run.statistic(task, model, design, values)
    decision = decide(
        threshold=opts.threshold,
        spot_mismatches=report.mismatches,
        spot_checks=len(spots),
        statistic=stat,
        extra=figs | {"spot_max_abs_diff": float(report.max_abs_diff.max(initial=0.0)),
                      "tau": challenge.tau},
        detail=explain(report),
    )  # fmt: skip
    return run.finish(record, decision, sid, response)


def _naive(run: _Run, task: Task, task_hash: str, content: str, model: Datamodel) -> dict[str, Any]:
    o = run.opts
    record = Record(
        id=os.urandom(16).hex(),
        prover_url=run.url,
        prover_key=run.client.prover_key or "",
        task_hash=task_hash,
        task_ref=o.task,
        attribution_hash=content,
        protocol="naive",
        estimator="none",
        challenge_json="{}",
        secret_json=json.dumps({"spot_checks": [], "salt": ""}),
        prover_trainings=0,
    )
    run.store.add(record)
    mse = run.fresh(task, model, o.fresh_samples)
    decision = decide(
        threshold=o.epsilon,
        spot_mismatches=0,
        spot_checks=0,
        statistic=float(mse.max()),
        extra={"mse_max": float(mse.max()), "insecure_baseline": 1.0},
    )
    return run.finish(record, decision, None, None)
