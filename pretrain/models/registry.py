"""Pretraining methods by name, in the spirit of timm's model registry.

``@register_method("droppos")`` on a :class:`~pretrain.models.method.PretrainMethod`
subclass makes it buildable from a run config: ``build_method(cfg)`` looks up
``cfg.method`` and calls the class's ``from_config``. The entry point, the benchmarks
and the analysis build methods only this way.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from .method import PretrainMethod

_METHODS: dict[str, type[PretrainMethod]] = {}
M = TypeVar("M", bound=type[PretrainMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a method under ``name`` (also its config section)."""

    def wrap(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"pretraining method {name!r} is already registered by {_METHODS[name].__name__}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def method_names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_METHODS)


def method_class(name: str) -> type[PretrainMethod]:
    """The class registered as ``name``; a ValueError names the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown pretraining method {name!r}; choose one of {method_names()}") from None


def build_method(cfg: Any) -> PretrainMethod:
    """The method named by ``cfg.method``, built from the run config once its ``check_config`` passes."""
    cls = method_class(cfg.method)
    cls.check_config(cfg)
    return cls.from_config(cfg)
