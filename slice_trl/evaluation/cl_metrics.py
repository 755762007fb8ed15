"""The metrics the continual-learning literature reports, read off a results matrix (docs/benchmarks.md
defines each once, with its formula and its source).

Every function takes the scores as plain lists (a leaf module: no package imports), 0-indexed:

- ``R``: the completed rows of R, ``R[i][j]`` = score on task j after training through task i
  (fractions in [0, 1]); row i has i + 1 entries (j <= i), ``None`` where a cell was not scored
  (``evaluation.every``). The diagonal is always scored.
- ``base``: R_0, the untrained model's score on every task (``evaluation.score_base``), or None.
- ``upcoming``: {i: R[i-1][i]}, task i scored after stage i-1, before it is trained
  (``evaluation.score_upcoming``).

t = len(R) - 1 is the last completed stage; every metric is computed on that prefix. A metric
whose inputs are missing is None ("n/a"), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["last", "avg", "bwt", "bwt_sapt", "fwt", "f_ra", "max_drops", "field_metrics", "FIELD_METRICS"]

# summary key -> the label the console table, compare and the card print (docs/benchmarks.md): Last is
# the mean final score that SAPT and O-LoRA call "AP", not this project's AP (the diagonal's mean)
FIELD_METRICS = {"Last": "Last (SAPT's AP)", "Avg": "Avg", "BWT": "BWT", "BWT_SAPT": "BWT (SAPT)", "FWT": "FWT",
                 "F_Ra": "F.Ra"}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _full(row: Sequence[float | None]) -> bool:
    return all(v is not None for v in row)


def last(R: Sequence[Sequence[float | None]]) -> float | None:
    """Last = (1/(t+1)) sum_j R[t][j]: the final model's mean over the tasks seen (this project's FP,
    SAPT's and O-LoRA's "AP"). None when the last row has an unscored cell."""
    return _mean(R[-1]) if R and _full(R[-1]) else None


def avg(R: Sequence[Sequence[float | None]]) -> float | None:
    """Avg = (1/(t+1)) sum_k (1/(k+1)) sum_{j <= k} R[k][j]: the mean over stages of the mean score on
    the tasks seen so far (EasyCL). None when any row has an unscored cell."""
    return _mean([_mean(row) for row in R]) if R and all(_full(row) for row in R) else None


def bwt(R: Sequence[Sequence[float | None]]) -> float | None:
    """BWT = (1/t) sum_{j < t} (R[t][j] - R[j][j]) (GEM, Lopez-Paz & Ranzato 2017; EasyCL). Negative =
    forgetting. None before a second stage or when the last row has an unscored cell."""
    if len(R) < 2 or not _full(R[-1]):
        return None
    t = len(R) - 1
    return _mean([R[t][j] - R[j][j] for j in range(t)])


def bwt_sapt(R: Sequence[Sequence[float | None]]) -> float | None:
    """SAPT's ``score.py``: (1/(t+1)) sum_{j <= t} (R[t][j] - R[j][j]), the last task's zero term
    included, so it equals FP - AP = -forgetting of this project. None as `bwt` (also for t = 0)."""
    if len(R) < 2 or not _full(R[-1]):
        return None
    t = len(R) - 1
    return _mean([R[t][j] - R[j][j] for j in range(t + 1)])


def fwt(R: Sequence[Sequence[float | None]], base: Sequence[float] | None,
        upcoming: Mapping[int, float]) -> float | None:
    """FWT = (1/t) sum_{i=1..t} (R[i-1][i] - R_0[i]) (GEM, Lopez-Paz & Ranzato 2017; EasyCL): how much
    the earlier tasks helped task i before it was trained. Needs R_0 and every R[i-1][i]
    (``evaluation.score_base`` and ``score_upcoming``); None otherwise or before a second stage."""
    t = len(R) - 1
    if t < 1 or base is None or any(i not in upcoming for i in range(1, t + 1)):
        return None
    return _mean([upcoming[i] - base[i] for i in range(1, t + 1)])


def max_drops(R: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per task j < t: max_{j <= k < t} R[k][j] - R[t][j], the best earlier score (over the scored
    cells; the diagonal always is) minus the score now; None where R[t][j] is unscored. The terms of
    F.Ra, and `ResultsMatrix.per_task_forgetting`."""
    t = len(R) - 1
    return [None if R[t][j] is None else max(R[k][j] for k in range(j, t) if R[k][j] is not None) - R[t][j]
            for j in range(t)]


def f_ra(R: Sequence[Sequence[float | None]]) -> float | None:
    """F.Ra = (1/t) sum_{j < t} (max_{j <= k < t} R[k][j] - R[t][j]) (SAPT's forgetting rate, Chaudhry
    et al. 2018; the terms are `max_drops`). None before a second stage or when the last row has an
    unscored cell."""
    if len(R) < 2 or not _full(R[-1]):
        return None
    return _mean(max_drops(R))


def field_metrics(R: Sequence[Sequence[float | None]], base: Sequence[float] | None = None,
                  upcoming: Mapping[int, float] | None = None) -> dict[str, float | None]:
    """Every metric of `FIELD_METRICS` on the completed prefix (None = n/a)."""
    return {"Last": last(R), "Avg": avg(R), "BWT": bwt(R), "BWT_SAPT": bwt_sapt(R),
            "FWT": fwt(R, base, upcoming or {}), "F_Ra": f_ra(R)}
