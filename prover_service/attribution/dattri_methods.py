"""dattri's influence-function attributors as a Prover method (``dattri-if``).

dattri (Deng et al. 2024) scores training example i for target z as ::

    tau(z)_i = mean_k  grad f_z(theta_k)^T (H_k + lambda I)^-1 grad l_i(theta_k)

with f_z the task's own output (the correct-class margin: true logit minus the largest other),
l_i the cross-entropy of pool example i, H_k the Hessian of the mean pool cross-entropy at
checkpoint theta_k, and the inverse-Hessian product done by one of dattri's solvers
(``solver``): ``explicit`` (``IFAttributorExplicit``: the whole Hessian, for small models),
``cg`` (``IFAttributorCG``), ``arnoldi`` (``IFAttributorArnoldi``: the top ``proj_dim``
eigenpairs) or ``datainf`` (``IFAttributorDataInf``: a per-layer closed form). The model, data
and checkpoints come from the task contract (:mod:`prover_service.attribution.checkpoints`); the
scores are calibrated like every score method
(:func:`prover_service.attribution.calibration.calibrate`). Cost: K checkpoints + M calibration
trainings = budget.

Settings (``dattri-if:solver=cg,regularization=0.01``): ``checkpoints`` K (default 8),
``solver`` (default ``explicit``), ``layers`` (``all``, or ``last``: the gradients and Hessian
of the last layer's parameters only; default ``all`` up to 2,000 parameters, else ``last``),
``regularization`` lambda (default 1e-3), ``subset`` (default 0.5), ``calibration`` M (default
budget - K), ``proj_dim`` and ``max_iter`` (Arnoldi, CG).

Defaults measured (mean LDS on fresh half-subsets, 64 calibration trainings): digits-logreg
(P = 650), explicit with K = 1 / 8 checkpoints: 0.60 / 0.79 (lambda 1e-2: 0.78; DataInf: 0.51,
5x slower); digits-mlp (P = 9,610), K = 4: CG over all parameters 0.15 in 275 s, Arnoldi
non-finite at lambda 1e-3.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from protocol.errors import InvalidParameterError
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress
from prover_service.attribution.checkpoints import (
    ModelView,
    calibrated_result,
    model_view,
    split_budget,
    train_checkpoints,
)

__all__ = ["SOLVERS", "dattri_if", "dattri_if_scores"]

SOLVERS = {
    "explicit": "IFAttributorExplicit",
    "cg": "IFAttributorCG",
    "arnoldi": "IFAttributorArnoldi",
    "datainf": "IFAttributorDataInf",
}
EXPLICIT_MAX_PARAMS = 2000


def _require_dattri() -> Any:
    try:
        with warnings.catch_warnings():  # importing it compiles torch code that warns
            warnings.simplefilter("ignore", DeprecationWarning)
            import dattri.algorithm.base
            import dattri.algorithm.influence_function as influence
            import dattri.task
    except ImportError:
        raise InvalidParameterError(
            "method 'dattri-if' needs dattri: pip install '.[dattri]'"
        ) from None
    # dattri draws tqdm bars on stderr while attributing; a service has no terminal for them.
    if not isinstance(dattri.algorithm.base.tqdm, functools.partial):
        dattri.algorithm.base.tqdm = functools.partial(dattri.algorithm.base.tqdm, disable=True)
    return influence, dattri.task


def _functions(view: ModelView) -> tuple[Any, Any]:
    import torch

    from protocol.tasks.trained import correct_class_margin  # imports torch

    module = view.module

    def loss(params: Any, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        logits = torch.func.functional_call(module, params, x)
        return torch.nn.functional.cross_entropy(logits, y)

    def margin(params: Any, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        return correct_class_margin(torch.func.functional_call(module, params, x), y).sum()

    return loss, margin


def last_layer(module: Any) -> list[str]:
    """Names of the parameters of the last submodule that has any (e.g. a classifier head)."""
    owners = [name for name, mod in module.named_modules() if list(mod.parameters(recurse=False))]
    prefix = owners[-1]
    return [n for n, _ in module.named_parameters() if n.rpartition(".")[0] == prefix]


def dattri_if_scores(
    task: Task,
    thetas: Any,
    solver: str,
    regularization: float,
    layer_name: list[str] | None = None,
    **solver_kwargs: Any,
) -> np.ndarray:
    """dattri influence scores (Z, N) of the checkpoints ``thetas`` (P, K), with respect to
    the parameters ``layer_name`` (all when None)."""
    from torch.utils.data import DataLoader, TensorDataset

    influence, dattri_task = _require_dattri()
    _, view = model_view(task, "dattri-if")
    loss, margin = _functions(view)
    states = [view.state_dict(thetas[:, k]) for k in range(thetas.shape[1])]
    attribution_task = dattri_task.AttributionTask(
        loss_func=loss, model=view.module, checkpoints=states, target_func=margin
    )
    attributor = getattr(influence, SOLVERS[solver])(
        task=attribution_task,
        layer_name=layer_name,
        device="cpu",
        regularization=regularization,
        **solver_kwargs,
    )
    pool = TensorDataset(*view.pool)
    targets = TensorDataset(*view.targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dattri warns about its own defaults (tqdm, vmap)
        attributor.cache(DataLoader(pool, batch_size=len(pool), shuffle=False))
        scores = attributor.attribute(
            DataLoader(pool, batch_size=len(pool), shuffle=False),
            DataLoader(targets, batch_size=len(targets), shuffle=False),
        )
    out = np.array(scores.detach().cpu().double().numpy(), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise InvalidParameterError(
            f"dattri-if ({solver}) gave non-finite scores: raise regularization "
            f"(now {regularization})"
        )
    return np.ascontiguousarray(out.T)


def dattri_if(
    task: Task,
    budget: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    checkpoints: int = 8,
    solver: str = "explicit",
    layers: str | None = None,
    regularization: float = 1e-3,
    subset: float = 0.5,
    calibration: int | None = None,
    proj_dim: int | None = None,
    max_iter: int | None = None,
) -> AttributionResult:
    """dattri's influence functions with K checkpoints and M calibration trainings (module
    doc)."""
    _require_dattri()
    if solver not in SOLVERS:
        raise InvalidParameterError(
            f"dattri-if: solver must be one of {', '.join(SOLVERS)}; got {solver!r}"
        )
    if not isinstance(regularization, int | float) or not regularization >= 0:
        raise InvalidParameterError(
            f"dattri-if: regularization must be a number >= 0; got {regularization!r}"
        )
    n_cal = split_budget("dattri-if", budget, checkpoints, calibration, subset)
    ext, view = model_view(task, "dattri-if")
    if layers is None:
        n_params = sum(p.numel() for p in view.module.parameters())
        layers = "all" if n_params <= EXPLICIT_MAX_PARAMS else "last"
    if layers not in ("all", "last"):
        raise InvalidParameterError(f"dattri-if: layers must be all or last; got {layers!r}")
    layer_name = last_layer(view.module) if layers == "last" else None
    kwargs: dict[str, Any] = {}
    for name, value in (("proj_dim", proj_dim), ("max_iter", max_iter)):
        if value is None:
            continue
        if not isinstance(value, int) or value < 1:
            raise InvalidParameterError(f"dattri-if: {name} must be an integer >= 1")
        if (name, solver) not in {("proj_dim", "arnoldi"), ("max_iter", "arnoldi"),
                                  ("max_iter", "cg")}:  # fmt: skip
            raise InvalidParameterError(f"dattri-if: {name} is not a setting of solver {solver}")
        kwargs[name] = value
    thetas = train_checkpoints(task, ext, checkpoints, subset, seed, "dattri-checkpoint",
                               progress, budget)  # fmt: skip
    scores = dattri_if_scores(task, thetas, solver, float(regularization), layer_name, **kwargs)
    settings = {
        "checkpoints": checkpoints,
        "solver": solver,
        "attributor": SOLVERS[solver],
        "layers": layer_name or "all",
        "regularization": regularization,
        "subset": subset,
        "calibration": n_cal,
        "target": "correct-class margin",
        "loss": "mean cross-entropy",
        **kwargs,
    }
    return calibrated_result("dattri-if", "dattri", task, scores, budget, checkpoints, p, seed,
                             progress, settings)  # fmt: skip
