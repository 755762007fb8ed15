"""Continual strategies (docs/strategies.md): the interface and registry in `base`, one module per
strategy. Select one in a recipe with ``strategy: {name: keeplora, ...}``."""

from . import eblora, inflora, keeplora, olora, slao  # noqa: F401  (each registers itself in REGISTRY)
from .base import REGISTRY, StageContext, StepHooks, Strategy, StrategyConfig, load_state, register, save_state


def build_strategy(config: StrategyConfig) -> Strategy:
    return REGISTRY[config.name](config)


__all__ = ["REGISTRY", "StageContext", "StepHooks", "Strategy", "StrategyConfig", "build_strategy", "load_state",
           "register", "save_state"]
