"""Continual strategies (docs/strategies.md): the interface and `register` in `base`, one module per
strategy, each registered in `slice_trl.utils.registry.strategies` (found there by importing this
package's modules; a package of your own adds one through the ``slice_trl.strategies`` entry point
group). Select one in a recipe with ``strategy: {name: keeplora, ...}``."""

from slice_trl.utils.registry import strategies
from slice_trl.strategies.base import (
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
    return strategies.get(config.name).obj(config)


__all__ = ["NoStrategy", "StageContext", "StepHooks", "Strategy", "StrategyConfig", "build_strategy", "engine_problem",
           "load_state", "register", "save_state"]
