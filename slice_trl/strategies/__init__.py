"""Continual strategies (docs/strategies.md): the interface and registry in `base`, one module per
strategy. Select one in a recipe with ``strategy: {name: keeplora, ...}``."""

from .base import REGISTRY, Strategy, StrategyConfig, build_strategy, config_from_dict, register


def _load_all() -> None:
    from . import eblora, inflora, keeplora, olora, slao  # noqa: F401  (each registers itself)


__all__ = ["REGISTRY", "Strategy", "StrategyConfig", "build_strategy", "config_from_dict", "register"]
