"""Which tasks are scored after each stage, and what that costs (docs/benchmarks.md, "Cost").

Scoring every seen task after every stage is T(T+1)/2 task evaluations for T tasks (120 for 15).
``evaluation.every: k`` scores every seen task only after stages k, 2k, ... and the last one; the
stages in between score only the task just trained, so R's diagonal (AP) and its last row (FP) are
always whole and the skipped cells are marked unscored. ``evaluation.score_upcoming`` adds the next
task, before it is trained (R[i-1][i], FWT): one more task evaluation per stage but the last.
"""

from __future__ import annotations

from slice_trl.configs.settings import EvalConfig

__all__ = ["full_stage", "tasks_to_score", "task_evaluations"]


def full_stage(t: int, n_tasks: int, every: int = 1) -> bool:
    """Whether stage t (0-based) scores every seen task: each ``every``-th stage and the last."""
    return (t + 1) % every == 0 or t == n_tasks - 1


def tasks_to_score(t: int, n_tasks: int, cfg: EvalConfig) -> list[int]:
    """Indices of the tasks scored after stage t (0-based), in order: 0..t on a full stage, else t
    alone; then t + 1 with ``score_upcoming`` (when there is a next task)."""
    seen = list(range(t + 1)) if full_stage(t, n_tasks, cfg.every) else [t]
    return seen + ([t + 1] if cfg.score_upcoming and t + 1 < n_tasks else [])


def task_evaluations(n_tasks: int, cfg: EvalConfig, score_base: bool | None = None) -> int:
    """Task evaluations of a whole run of ``n_tasks`` stages (+ T for the base row R_0 with
    ``evaluation.score_base``): with every = 1 and nothing else, T(T+1)/2."""
    base = cfg.score_base if score_base is None else score_base
    return sum(len(tasks_to_score(t, n_tasks, cfg)) for t in range(n_tasks)) + (n_tasks if base else 0)
