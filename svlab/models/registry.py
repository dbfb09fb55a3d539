"""The model registry: names like ``"resnet34"`` mapped to a builder and its default arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}
MODEL_FORMAT = "svlab-model-v1"  # the "format" of a saved model: name, overrides, state_dict


def register(name: str, **defaults: Any) -> Callable:
    """Decorator registering a model class or function under ``name`` with default arguments.

    >>> @register("doc_linear", in_features=2, out_features=1)
    ... def doc_linear(in_features, out_features):
    ...     return nn.Linear(in_features, out_features)
    >>> build("doc_linear", out_features=3).out_features
    3
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name][0] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = (builder, defaults)
        return builder

    return decorator


def available() -> list[str]:
    """The names :func:`build` knows, sorted.

    >>> "resnet34" in available()
    True
    """
    return sorted(_REGISTRY)


def arguments(name: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments ``build(name, **overrides)`` passes to the model's builder.

    >>> kwargs = arguments("resnet18", base_width=8); kwargs["depths"], kwargs["base_width"]
    ((2, 2, 2, 2), 8)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    builder, defaults = _REGISTRY[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise ValueError(
                f"model {name!r} has no setting {unknown[0]!r}; its settings: {', '.join(params)}"
            )
    return {**defaults, **overrides}


def build(name: str, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name``, with ``overrides`` replacing its defaults.

    >>> build("resnet34", base_width=4, embed_dim=8).embed_dim
    8
    >>> build("resnet35")
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'resnet35'; known models: ...
    """
    kwargs = arguments(name, **overrides)
    return _REGISTRY[name][0](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (weights and biases; BatchNorm running statistics excluded).

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def from_saved(saved: dict, path: Any = "<memory>", name: str | None = None) -> nn.Module:
    """The model a saved dict describes (``model`` name, ``overrides``, ``state_dict``: what
    :func:`svlab.checkpoint.save_model` writes), built and loaded. ``name``, when given, must
    match; weights that do not fit raise ``ValueError`` naming ``path``.

    >>> net = build("resnet18", base_width=2, embed_dim=8)
    >>> saved = {"model": "resnet18", "overrides": {"base_width": 2, "embed_dim": 8},
    ...          "state_dict": net.state_dict()}
    >>> from_saved(saved).embed_dim
    8
    >>> from_saved(saved, "m.pt", name="resnet34")
    Traceback (most recent call last):
    ...
    ValueError: m.pt holds a 'resnet18' model, not 'resnet34'
    """
    if name is not None and name != saved["model"]:
        raise ValueError(f"{path} holds a {saved['model']!r} model, not {name!r}")
    model = build(saved["model"], **saved["overrides"])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not fit {saved['model']!r} with {saved['overrides']}: {err}"
        ) from err
    return model
