"""Continual strategies (docs/strategies.md): the interface and registry in `base`, one module per
strategy. Select one in a recipe with ``strategy: {name: keeplora, ...}``."""

from slice_trl.strategies import eblora, inflora, keeplora, olora, slao  # noqa: F401  (each registers itself in REGISTRY)
from slice_trl.strategies.base import (
    REGISTRY,
    NoStrategy,
    StageContext,
    StepHooks,
    Strategy,
    StrategyConfig,
    engine_problem,
    load_state,
    register,
    save_state,
)


def build_strategy(config: StrategyConfig | None, zero_stage: int | None = None) -> Strategy:
    """The strategy ``config`` names (`NoStrategy` for None: the recipe names none); a ValueError
    when it cannot run under DeepSpeed ZeRO ``zero_stage`` (None: no DeepSpeed; `base.engine_problem`)."""
    if config is None:
        return NoStrategy()
    why = engine_problem(config.name, zero_stage)
    if why:
        raise ValueError(why)
    return REGISTRY[config.name](config)


__all__ = ["REGISTRY", "NoStrategy", "StageContext", "StepHooks", "Strategy", "StrategyConfig", "build_strategy",
           "engine_problem", "load_state", "register", "save_state"]
