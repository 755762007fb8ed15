"""The replay-sample provider: which earlier-task examples are seen before (and, optionally,
during) a task.

The paper's protocol: before task t, draw a fresh sample of the earlier tasks, use it once for
SLICE's G_prev, and drop it. Samples come from the earlier tasks' TRAIN splits only (the
reference code leaks held-out examples; we do not). Every draw is seeded by (seed, stage,
task index), so a resumed run and every process of a multi-process run draw the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from datasets import Dataset, concatenate_datasets

from slice_trl.configs.config import ReplayConfig
from slice_trl.tasks.base import Task


def stage_seed(seed: int, stage: int, salt: int = 0) -> int:
    """A seed for stage ``stage`` (0-indexed) derived from the run seed."""
    return (seed * 1_000_003 + stage * 7_919 + salt * 104_729) % (2**31 - 1)


def _draw(ds: Dataset, n: int, seed: int) -> Dataset:
    """n examples without replacement (all of them, shuffled, if the split is smaller)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=gen)[: min(n, len(ds))].tolist()
    return ds.select(order)


class ReplaySampleProvider:
    """Draws earlier-task samples for stage t.

    ``initialization_sample`` returns one Dataset per earlier task ("each_task") or a single
    pooled Dataset ("pooled"); ``training_mix`` returns the examples mixed into the stage's
    train split when training-time replay is on.
    """

    def __init__(self, config: ReplayConfig | None = None):
        self.config = config or ReplayConfig()

    def initialization_sample(self, stage: int, earlier: Sequence[Task], n: int, mode: str = "each_task"
                              ) -> list[Dataset]:
        """n examples per earlier task (mode "each_task") or n in total ("pooled")."""
        if not earlier:
            return []
        cfg = self.config
        n = cfg.samples_per_task or n
        if mode == "each_task":
            return [_draw(task.train, n, stage_seed(cfg.seed, stage, j + 1)) for j, task in enumerate(earlier)]
        pooled = concatenate_datasets([task.train for task in earlier])
        return [_draw(pooled, n, stage_seed(cfg.seed, stage, 0))]

    def training_mix(self, stage: int, earlier: Sequence[Task], current_train_size: int) -> Dataset | None:
        """``train_fraction * current_train_size`` earlier-task examples, split evenly across tasks."""
        cfg = self.config
        if cfg.train_fraction <= 0 or not earlier:
            return None
        total = max(1, round(cfg.train_fraction * current_train_size))
        per_task = max(1, total // len(earlier))
        parts = [_draw(task.train, per_task, stage_seed(cfg.seed, stage, 10_000 + j)) for j, task in enumerate(earlier)]
        return concatenate_datasets(parts)
