"""What the outside gradient tools (TRAK, dattri) need from a task: a torch model, its data and
checkpoints trained by the task's own engine.

Gradient-based attribution tools take a ``torch.nn.Module``, (input, label) pairs for the pool
and the targets, and a few trained checkpoints of the model (state dicts). A task gives them
through two parts of the contract:

* the **differentiable extension** (:class:`protocol.tasks.Differentiable`) trains the
  checkpoints: ``finetune(masks, None, full_model())`` fits one model per subset mask on the
  task's own engine (digits-logreg: the L-BFGS solve to the subset's optimum; digits-mlp:
  ``finetune_steps`` exact SGD steps from the full-pool model). Each checkpoint is counted as
  one training, as Daunce counts its fine-tunes;
* a **model view** (:class:`ModelView`) reads the flat parameter columns as a module: the
  task's own ``attribution_model()`` when it has one, else the built-in view of
  ``digits-logreg`` or ``digits-mlp``.

Method settings travel in the method reference, like task parameters:
``trak:checkpoints=32,proj_dim=256`` (:func:`parse_method`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from protocol.errors import BudgetError, InvalidParameterError
from protocol.sampling import sample_masks
from protocol.tasks import Differentiable, Task, declared, parse_value
from prover_service.attribution.base import AttributionResult, Progress
from prover_service.attribution.calibration import MIN_CALIBRATION, calibrate_with_quality

if TYPE_CHECKING:
    import torch

__all__ = [
    "ModelView",
    "calibrated_result",
    "check_settings",
    "model_view",
    "parse_method",
    "split_budget",
    "train_checkpoints",
]


@dataclass(frozen=True)
class ModelView:
    """A task's model as torch sees it.

    ``module``: a ``torch.nn.Module`` whose forward maps inputs (B, ...) to logits (B, C);
    ``state_dict(theta)``: one parameter column (P,) of the task's (P, K) matrix as the
    module's state dict; ``pool`` and ``targets``: (inputs, labels) tensors, N and Z rows.
    """

    module: torch.nn.Module
    state_dict: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    pool: tuple[torch.Tensor, torch.Tensor]
    targets: tuple[torch.Tensor, torch.Tensor]


def parse_method(ref: str) -> tuple[str, dict[str, Any]]:
    """``"trak:checkpoints=32,proj_dim=256"`` -> ``("trak", {"checkpoints": 32, ...})``.

    Values are read as int, then float, then string (as task parameters are).
    """
    name, _, text = ref.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidParameterError(
                f"method setting {item!r} is not of the form key=value (e.g. trak:proj_dim=256)"
            )
        options[key.strip()] = parse_value(value.strip())
    return name.strip(), options


def check_settings(method: str, function: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse settings ``function`` does not take (its keyword parameters after the budget)."""
    fixed = {"task", "budget", "p", "seed", "progress"}
    known = [n for n in inspect.signature(function).parameters if n not in fixed]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no settings"
        raise InvalidParameterError(
            f"method {method!r} has no setting {', '.join(unknown)}; it takes: {takes}"
        )


def split_budget(
    method: str, budget: int, checkpoints: int, calibration: int | None, subset: float
) -> int:
    """Calibration trainings left once ``checkpoints`` are paid: budget - checkpoints, or
    ``calibration`` when given (then the two must add up to the budget). Checks the
    checkpoints' settings, before any training."""
    if not isinstance(checkpoints, int) or checkpoints < 1:
        raise InvalidParameterError(f"{method}: checkpoints must be an integer >= 1")
    if not isinstance(subset, int | float) or not 0 < subset <= 1:
        raise InvalidParameterError(f"{method}: subset must be in (0, 1]; got {subset!r}")
    n_cal = budget - checkpoints if calibration is None else calibration
    if not isinstance(n_cal, int) or n_cal < MIN_CALIBRATION:
        raise BudgetError(
            f"{method} needs {checkpoints} checkpoints plus at least {MIN_CALIBRATION} "
            f"calibration trainings: a budget of at least {checkpoints + MIN_CALIBRATION}; "
            f"got {budget}"
        )
    if checkpoints + n_cal != budget:
        raise BudgetError(
            f"{method}: checkpoints ({checkpoints}) + calibration ({n_cal}) must equal the "
            f"budget ({budget})"
        )
    return n_cal


def _digits_view(task: Any) -> ModelView:
    import torch

    data = task.data
    x, y = torch.tensor(data.x_pool, dtype=torch.float32), torch.tensor(data.y_pool)
    xt, yt = torch.tensor(data.x_targets, dtype=torch.float32), torch.tensor(data.y_targets)
    d, c = x.shape[1], int(max(data.y_pool.max(), data.y_targets.max())) + 1
    if task.name == "digits-logreg":
        # theta (D C,) holds W (D, C) row-major; the inputs carry the bias column.
        module: torch.nn.Module = torch.nn.Linear(d, c, bias=False)

        def state(theta: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"weight": theta.reshape(d, c).T.float().contiguous()}

    else:  # digits-mlp: theta = [W1 (D, H) row-major, W2 (H + 1, C) row-major, bias last]
        h = task.hidden
        module = torch.nn.Sequential(
            torch.nn.Linear(d, h, bias=False), torch.nn.ReLU(), torch.nn.Linear(h, c)
        )

        def state(theta: torch.Tensor) -> dict[str, torch.Tensor]:
            w1 = theta[: d * h].reshape(d, h)
            w2 = theta[d * h :].reshape(h + 1, c)
            return {
                "0.weight": w1.T.float().contiguous(),
                "2.weight": w2[:h].T.float().contiguous(),
                "2.bias": w2[h].float().contiguous(),
            }

    return ModelView(module, state, (x, y), (xt, yt))


_BUILTIN_VIEWS: dict[str, Callable[[Any], ModelView]] = {
    "digits-logreg": _digits_view,
    "digits-mlp": _digits_view,
}


def model_view(task: Task, method: str) -> tuple[Differentiable, ModelView]:
    """The differentiable extension and the model view of ``task``, or a clear refusal."""
    base = declared(task)
    ext = base.differentiable()
    own = getattr(task, "attribution_model", None)
    view = own() if callable(own) else None
    if view is None and task.name in _BUILTIN_VIEWS:
        view = _BUILTIN_VIEWS[task.name](task)
    if ext is None or view is None:
        raise InvalidParameterError(
            f"{method} needs a differentiable task (protocol.tasks.Differentiable: full_model, "
            f"finetune, ...) with a torch model view (attribution_model() -> "
            f"prover_service.attribution.checkpoints.ModelView; built in for "
            f"{', '.join(sorted(_BUILTIN_VIEWS))}); task {task.name!r} has "
            f"{'no model view' if ext is not None else 'no differentiable extension'}"
        )
    return ext, view


def train_checkpoints(
    task: Task,
    ext: Differentiable,
    count: int,
    subset: float,
    seed: bytes,
    domain: str,
    progress: Progress | None = None,
    total: int | None = None,
) -> torch.Tensor:
    """``count`` models fitted on subsets x ~ B_subset (stream ``domain``) by the task's own
    ``finetune`` from its full-pool model: (P, count) parameter columns."""
    import torch

    if not 0 < subset <= 1:
        raise InvalidParameterError(f"subset must be in (0, 1]; got {subset}")
    theta0 = ext.full_model()
    chunk = declared(task).chunk_size
    columns = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        masks = sample_masks(seed, task.n_train, subset, range(start, stop), domain=domain)
        w = torch.tensor(masks.astype(np.float64), dtype=theta0.dtype, device=theta0.device)
        with torch.no_grad():
            columns.append(ext.finetune(w, None, theta0).detach().cpu())
        if progress is not None:
            progress(stop, total if total is not None else count)
    return torch.cat(columns, dim=1)


def calibrated_result(
    method: str, tool: str, task: Task, scores: NDArray[np.float64], budget: int,
    checkpoints: int, p: float, seed: bytes, progress: Progress | None,
    settings: dict[str, Any],
) -> AttributionResult:  # fmt: skip
    """The tool's ``scores`` (Z, N), calibrated on the trainings the checkpoints left
    (``settings["calibration"]``, counted after them in the progress), with the provenance the
    manifest signs: tool, version, settings, checkpoints, trainings and calibration quality."""
    model, quality = calibrate_with_quality(task, scores, settings["calibration"], p, seed,
                                            progress, checkpoints, budget)  # fmt: skip
    details = {"tool": tool, "version": version(tool), "settings": settings,
               "checkpoints": checkpoints, "trainings": budget, **quality.summary()}  # fmt: skip
    return AttributionResult(method, model, budget, details)
