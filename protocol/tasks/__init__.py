"""Training tasks: the contract, the built-ins, and how a task is named on a command line.

A task reference is either

* a built-in name, optionally with parameters: ``planted`` or
  ``planted:n_train=1000,n_targets=5,b3=0.05`` (values parsed as int, then float, then string).
  Built in: ``planted``, ``digits-logreg``, ``digits-mlp``, ``cifar10-resnet:data_dir=PATH``,
  ``linear-probe:features=FILE.npz`` (certifiable: :mod:`protocol.tasks.linear_probe`);
* ``path/to/file.py:FACTORY``, where ``FACTORY()`` returns an object meeting :class:`Task`.

:func:`load_task` resolves both forms and returns a :class:`TaskBase` (a user's object is
wrapped with the contract's defaults, :func:`protocol.tasks.base.declared`); both services and
every CLI call it. Built-in tasks are imported on first use, so that signing, the wire format
and every CLI's ``--help`` never import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.errors import ProtocolError, TaskError
from protocol.tasks.base import (
    Differentiable,
    Task,
    TaskBase,
    TrainingOutputs,
    declared,
    evaluate_checked,
    spec_hash,
)

__all__ = [
    "BUILTIN_TASKS",
    "CifarResNet",
    "Differentiable",
    "DigitsLogReg",
    "DigitsMLP",
    "LinearProbe",
    "PlantedSpectrum",
    "PlantedTask",
    "Task",
    "TaskBase",
    "TrainingOutputs",
    "builtin_factory",
    "declared",
    "evaluate_checked",
    "load_task",
    "parse_value",
    "spec_hash",
]

# name -> "module:class", imported on first use (module doc).
BUILTIN_TASKS: dict[str, str] = {
    "planted": "protocol.tasks.planted:PlantedTask",
    "digits-logreg": "protocol.tasks.digits_logreg:DigitsLogReg",
    "digits-mlp": "protocol.tasks.digits_mlp:DigitsMLP",
    "cifar10-resnet": "protocol.tasks.cifar:CifarResNet",
    "linear-probe": "protocol.tasks.linear_probe:LinearProbe",
}
_CLASSES = {
    "PlantedTask": "protocol.tasks.planted",
    "PlantedSpectrum": "protocol.tasks.planted",
    "DigitsLogReg": "protocol.tasks.digits_logreg",
    "DigitsMLP": "protocol.tasks.digits_mlp",
    "CifarResNet": "protocol.tasks.cifar",
    "LinearProbe": "protocol.tasks.linear_probe",
}


def __getattr__(name: str) -> Any:
    """The built-in task classes, imported on first access (module doc)."""
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'protocol.tasks' has no attribute {name!r}")


def builtin_factory(name: str) -> Callable[..., TaskBase]:
    """The class of a built-in task, imported now."""
    module, _, cls = BUILTIN_TASKS[name].partition(":")
    factory: Callable[..., TaskBase] = getattr(importlib.import_module(module), cls)
    return factory


def parse_value(text: str) -> Any:
    """A reference's parameter value (``planted:b3=0.05``, ``trak:proj_dim=128``): an int,
    else a float, else the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_params(text: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TaskError(f"task parameter {item!r} is not of the form key=value")
        params[key.strip()] = parse_value(value.strip())
    return params


def load_task(ref: str) -> TaskBase:
    """Resolve a task reference (module doc) to a task object, or raise :class:`TaskError`."""
    ref = ref.strip()
    path_part, sep, factory_name = ref.rpartition(":")
    if sep and path_part.endswith(".py"):
        return _load_from_file(Path(path_part), factory_name)
    name, _, param_text = ref.partition(":")
    if name not in BUILTIN_TASKS:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise TaskError(f"unknown task {name!r}; built-in tasks: {known}; or use FILE.py:FACTORY")
    params = _parse_params(param_text)
    try:
        task = builtin_factory(name)(**params)
    except TypeError as exc:
        raise TaskError(f"bad parameters for task {name!r}: {exc}") from None
    except ProtocolError as exc:
        raise TaskError(str(exc)) from None
    return declared(task)


def _load_from_file(path: Path, factory_name: str) -> TaskBase:
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist")
    if not factory_name.isidentifier():
        raise TaskError(f"task factory {factory_name!r} is not a Python identifier")
    module_name = f"_vda_task_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot import task file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code: report any failure as a TaskError
        raise TaskError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise TaskError(f"{str(path)!r} has no callable {factory_name!r}")
    try:
        task = factory()
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code: report any failure as a TaskError
        raise TaskError(f"{factory_name}() failed: {type(exc).__name__}: {exc}") from None
    return declared(task)
