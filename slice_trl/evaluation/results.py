"""The results matrix R of a continual run and the metrics read off it (docs/method.md, "Evaluation
and metrics").

``R[i][j]`` = score (in [0, 1]) on task j after training through task i; only ``j <= i`` is ever
measured, so R is lower-triangular and entries above the diagonal are ``None``. Rows are filled
stage by stage; every metric is computed on the completed prefix, so it can be reported after
each stage:

- AP (plasticity)  = mean_{i <= t} R[i][i]
- FP (stability)   = mean_{j <= t} R[t][j]
- Fgt (forgetting) = AP - FP (positive = forgetting, negative = backward transfer)

where t is the last completed stage. An optional base row R_0 (the base model's score on every
task before stage 1, `set_base`) adds what training changed relative to the untrained model:

- learned  = mean_{i <= t} (R[i][i] - R_0[i])   what each task gained while it was trained
- retained = mean_{j <= t} (R[t][j] - R_0[j])   what is left of those gains after stage t

The field's metrics (Last, Avg, BWT, FWT, F.Ra; `slice_trl.evaluation.cl_metrics`, docs/benchmarks.md) are in
`summary()` too. FWT needs the score of task i before it is trained, R[i-1][i], kept apart from the
lower-triangular R in `upcoming` (``evaluation.score_upcoming``). A cell below the diagonal of a
completed row may be ``None``: not scored at that stage (``evaluation.every``), listed by `unscored`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from slice_trl.evaluation.cl_metrics import FIELD_METRICS, field_metrics, last, max_drops
from slice_trl.configs.settings import duplicate_names

__all__ = ["ResultsMatrix"]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _score(name: str, v, where: str) -> float:
    """A validated score in [0, 1] (``where`` names the row in the error)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"Score of {name!r} in {where} must be a number, got {v!r}.")
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"Score of {name!r} in {where} is {v}; scores are fractions in [0, 1].")
    return v


class ResultsMatrix:
    """Lower-triangular T x T score matrix, filled one stage (row) at a time.

    ``task_names``: the T tasks in training order. Rows are set in order (row i after rows
    0..i-1), each with exactly i + 1 scores (tasks 0..i); ``completed`` counts the rows set.
    Scores are floats in [0, 1]; ``None`` marks "not measured" (above the diagonal, or a row not
    yet set).
    """

    def __init__(self, task_names: Sequence[str]):
        names = [str(n) for n in task_names]
        if not names:
            raise ValueError("ResultsMatrix needs at least one task name.")
        dupes = duplicate_names(names)
        if dupes:
            raise ValueError(f"Task names must be unique; repeated: {dupes}.")
        self.task_names = names
        self._rows: list[list[float]] = []
        self.base: list[float] | None = None  # R_0, one score per task (all T), or None
        self.upcoming: dict[int, float] = {}  # {i: R[i-1][i]}, task i scored before it was trained

    # ------------------------------------------------------------------ filling
    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def completed(self) -> int:
        """Number of finished stages (rows set)."""
        return len(self._rows)

    def set_row(self, i: int, scores: Mapping[str, float] | Sequence[float]) -> None:
        """Set row ``i`` (scores on tasks 0..i after training through task i).

        ``scores``: a list of exactly i + 1 numbers, or a mapping with exactly the names of tasks
        0..i. Row i may be set once rows 0..i-1 are; the last set row may be set again (a
        re-evaluation), earlier rows may not, since later rows and metrics depend on them.
        Raises ``ValueError`` on a wrong index, length, name or value.
        """
        if not isinstance(i, int) or not 0 <= i < self.num_tasks:
            raise ValueError(f"Row index {i!r} is out of range for {self.num_tasks} tasks.")
        if i > self.completed:
            raise ValueError(f"Row {i} cannot be set before rows {list(range(self.completed, i))}: "
                             "R is filled stage by stage.")
        if i < self.completed - 1:
            raise ValueError(f"Row {i} is already followed by rows up to {self.completed - 1}; "
                             "only the last row may be replaced.")
        seen = self.task_names[: i + 1]
        if isinstance(scores, Mapping):
            extra = sorted(set(scores) - set(seen))
            missing = [n for n in seen if n not in scores]
            if extra or missing:
                hint = f" Tasks after stage {i} cannot be scored yet (R is lower-triangular)." if any(
                    n in self.task_names[i + 1:] for n in extra) else ""
                raise ValueError(f"Row {i} ({self.task_names[i]!r}) needs scores for exactly {seen}; "
                                 f"missing {missing}, unexpected {extra}.{hint}")
            values = [scores[n] for n in seen]
        else:
            values = list(scores)
            if len(values) != i + 1:
                raise ValueError(f"Row {i} ({self.task_names[i]!r}) needs exactly {i + 1} scores (tasks 0..{i}), "
                                 f"got {len(values)}. Entries above the diagonal are not measured.")
        if values[i] is None:
            raise ValueError(f"Row {i} ({self.task_names[i]!r}) needs a score on its own task (the diagonal).")
        # None below the diagonal: a cell not scored at this stage (evaluation.every)
        row = [None if v is None else _score(name, v, f"row {i}") for name, v in zip(seen, values)]
        if i == self.completed:
            self._rows.append(row)
        else:
            self._rows[i] = row

    def record_stage(self, i: int, scores: Mapping[str, float]) -> None:
        """Row i from a stage's {task: score}: tasks 0..i it lacks are unscored (``evaluation.every``;
        task i is required), task i + 1 goes to `upcoming` (``evaluation.score_upcoming``)."""
        nxt = self.task_names[i + 1] if i + 1 < self.num_tasks else None
        extra = sorted(set(scores) - set(self.task_names[: i + 1]) - {nxt})
        if extra:
            raise ValueError(f"Stage {i} cannot score {extra}: only tasks 0..{i} and the next one.")
        self.set_row(i, {n: scores.get(n) for n in self.task_names[: i + 1]})
        if nxt in scores:
            self.upcoming[i + 1] = _score(nxt, scores[nxt], f"row {i} (upcoming)")

    @property
    def unscored(self) -> list[tuple[int, int]]:
        """(i, j) of every cell of a completed row left unscored (``evaluation.every``)."""
        return [(i, j) for i, row in enumerate(self._rows) for j, v in enumerate(row) if v is None]

    def set_base(self, scores: Mapping[str, float] | Sequence[float]) -> None:
        """Set R_0: the base model's score on every task (all T of them) before stage 1, as a list
        in task order or a mapping with exactly the task names. Raises ``ValueError`` otherwise."""
        if isinstance(scores, Mapping):
            missing = [n for n in self.task_names if n not in scores]
            extra = sorted(set(scores) - set(self.task_names))
            if missing or extra:
                raise ValueError(f"The base row needs scores for exactly {self.task_names}; missing {missing}, "
                                 f"unexpected {extra}.")
            values = [scores[n] for n in self.task_names]
        else:
            values = list(scores)
            if len(values) != self.num_tasks:
                raise ValueError(f"The base row needs {self.num_tasks} scores (one per task), got {len(values)}.")
        self.base = [_score(name, v, "the base row") for name, v in zip(self.task_names, values)]

    def __getitem__(self, ij: tuple[int, int]) -> float | None:
        i, j = ij
        if not (0 <= i < self.num_tasks and 0 <= j < self.num_tasks):
            raise IndexError(f"R[{i}, {j}] is outside {self.num_tasks} x {self.num_tasks}.")
        if i >= self.completed or j > i:
            return None
        return self._rows[i][j]

    @property
    def matrix(self) -> list[list[float | None]]:
        """Full T x T list of lists; ``None`` above the diagonal and in rows not yet set."""
        return [[self[i, j] for j in range(self.num_tasks)] for i in range(self.num_tasks)]

    # ------------------------------------------------------------------ metrics
    def _require_rows(self, what: str) -> int:
        if self.completed == 0:
            raise ValueError(f"{what} needs at least one completed stage; no row of R is set.")
        return self.completed - 1

    def ap(self) -> float:
        """Average plasticity after the last completed stage t: mean_{i <= t} R[i][i]."""
        t = self._require_rows("AP")
        return _mean([self._rows[i][i] for i in range(t + 1)])

    def fp(self) -> float | None:
        """Final performance after the last completed stage t: mean_{j <= t} R[t][j] (None when row t
        has an unscored cell, ``evaluation.every``)."""
        self._require_rows("FP")
        return last(self._rows)

    def forgetting(self) -> float | None:
        """AP - FP (positive = forgetting; negative = backward transfer); None when FP is."""
        fp = self.fp()
        return None if fp is None else self.ap() - fp

    def _require_base(self, what: str) -> int:
        if self.base is None:
            raise ValueError(f"{what} needs the base row R_0 (set_base; evaluation.score_base: true in a run).")
        return self._require_rows(what)

    def learned(self) -> float:
        """mean_{i <= t} (R[i][i] - R_0[i]): the mean gain of each task over the base model right
        after it was trained (AP minus the base's mean over the same tasks)."""
        t = self._require_base("learned")
        return _mean([self._rows[i][i] - self.base[i] for i in range(t + 1)])

    def retained(self) -> float:
        """mean_{j <= t} (R[t][j] - R_0[j]): the final model's mean gain over the base model on the
        tasks seen so far (FP minus the base's mean over the same tasks)."""
        t = self._require_base("retained")
        fp = self.fp()
        return None if fp is None else fp - _mean(self.base[: t + 1])

    def relative_to_base(self) -> list[list[float | None]]:
        """T x T: R[i][j] / R_0[j] (1.0 = the base model's score); ``None`` where R is unmeasured
        or R_0[j] is 0 (a ratio to zero says nothing)."""
        if self.base is None:
            raise ValueError("relative_to_base needs the base row R_0 (set_base).")
        return [[None if v is None or self.base[j] == 0 else v / self.base[j] for j, v in enumerate(row)]
                for row in self.matrix]

    def per_task_forgetting(self) -> dict[str, float]:
        """For each task j seen before the last completed stage t (j < t): the best score it had
        at an earlier stage minus its score now, max_{j <= i < t} R[i][j] - R[t][j] (over the scored
        cells). Tasks without an earlier measurement (j == t) or unscored now are left out."""
        if self.completed == 0:
            return {}
        return {self.task_names[j]: d for j, d in enumerate(max_drops(self._rows)) if d is not None}

    def summary(self) -> dict:
        """{"AP", "FP", "forgetting", "per_task_forgetting"} on the completed prefix (None
        values before the first stage), and the field's metrics of `cl_metrics.FIELD_METRICS`
        (Last, Avg, BWT, BWT_SAPT, FWT, F_Ra; None = n/a)."""
        if self.completed == 0:
            out = {"AP": None, "FP": None, "forgetting": None, "per_task_forgetting": {}}
        else:
            out = {"AP": self.ap(), "FP": self.fp(), "forgetting": self.forgetting(),
                   "per_task_forgetting": self.per_task_forgetting()}
        if self.base is not None:
            out.update(learned=self.learned() if self.completed else None,
                       retained=self.retained() if self.completed else None)
        return {**out, **field_metrics(self._rows, self.base, self.upcoming)}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """``{"task_names": [...], "R": T x T list with None (JSON null) where unmeasured,
        "completed": int}``, plus ``"base"`` (R_0, a list of T scores) when it is set, ``"upcoming"``
        (T entries: task i's score before it was trained, R[i-1][i], else null) when any was scored,
        and ``"unscored"`` ([i, j] cells of completed rows not scored) when any was left out."""
        out = {"task_names": list(self.task_names), "R": self.matrix, "completed": self.completed}
        if self.base is not None:
            out["base"] = list(self.base)
        if self.upcoming:
            out["upcoming"] = [self.upcoming.get(i) for i in range(self.num_tasks)]
        if self.unscored:
            out["unscored"] = [list(ij) for ij in self.unscored]
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ResultsMatrix:
        """Inverse of `to_dict` (extra keys such as "AP" are ignored). Rows are read until the
        first unmeasured diagonal entry; a non-null entry above the diagonal is an error."""
        names = data["task_names"]
        R = data.get("R") or []
        out = cls(names)
        if len(R) > len(names):
            raise ValueError(f"R has {len(R)} rows for {len(names)} tasks.")
        for i, row in enumerate(R):
            row = list(row)
            above = [j for j in range(i + 1, len(row)) if row[j] is not None]
            if above:
                raise ValueError(f"R[{i}] has values above the diagonal at columns {above}; R is lower-triangular.")
            if i >= len(row) or row[i] is None:
                # an unset row (no diagonal score); it and everything after it must be unset
                if any(any(v is not None for v in later) for later in R[i:]):
                    raise ValueError(f"R row {i} has no diagonal score but scores elsewhere in it or later rows.")
                break
            out.set_row(i, row[: i + 1])
        if data.get("base") is not None:
            out.set_base(data["base"])
        for i, v in enumerate(data.get("upcoming") or []):
            if v is not None:
                out.upcoming[i] = _score(out.task_names[i], v, "upcoming")
        completed = data.get("completed")
        if completed is not None and completed != out.completed:
            raise ValueError(f"'completed'={completed} but R has {out.completed} set rows.")
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, ResultsMatrix) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ResultsMatrix(tasks={self.task_names}, completed={self.completed})"

    # ------------------------------------------------------------------ reporting
    def table(self, digits: int = 1) -> str:
        """Readable text table of R (scores x 100): the base row R_0 first if set, one row per stage
        (blank until it has run), columns numbered like the rows, then AP, FP and Fgt of the
        completed prefix (and learned / retained with R_0). Rendered
        with rich when it is installed, plain text otherwise."""
        # Columns are numbered like the rows (task j = row j's name): NI task names are ~40
        # characters, too wide to head a column each.
        headers = ["after stage \\ on task"] + [str(j + 1) for j in range(self.num_tasks)]
        rows = [["0. base"] + [f"{100 * v:.{digits}f}" for v in self.base]] if self.base is not None else []
        for i in range(self.completed):  # "-": not scored at this stage; (x): scored before it was trained
            rows.append([f"{i + 1}. {self.task_names[i]}"] + [
                f"{100 * v:.{digits}f}" if (v := self[i, j]) is not None else "-" if j <= i else
                f"({100 * self.upcoming[j]:.{digits}f})" if j == i + 1 and j in self.upcoming else ""
                for j in range(self.num_tasks)])
        rows += [[f"{i + 1}. {self.task_names[i]}"] + [""] * self.num_tasks
                 for i in range(self.completed, self.num_tasks)]
        if self.completed:
            footer = (f"AP {_x100(self.ap(), digits)}  FP {_x100(self.fp(), digits)}  "
                      f"Fgt {_x100(self.forgetting(), digits, '+')}  (x100, after stage {self.completed})")
            if self.base is not None:
                footer += (f"  learned {_x100(self.learned(), digits, '+')}  "
                           f"retained {_x100(self.retained(), digits, '+')}")
            field = field_metrics(self._rows, self.base, self.upcoming)
            footer += "\n" + "  ".join(f"{FIELD_METRICS[k]} {_x100(v, digits, '+' if 'WT' in k else '')}"
                                       for k, v in field.items() if k != "BWT_SAPT")  # BWT (SAPT) = -Fgt
        else:
            footer = "no completed stage yet"
        try:
            return self._rich_table(headers, rows, footer)
        except ImportError:
            return self._plain_table(headers, rows, footer)

    @staticmethod
    def _plain_table(headers: list[str], rows: list[list[str]], footer: str) -> str:
        widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(headers)]

        def line(cells):
            return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

        out = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows] + [footer]
        return "\n".join(out)

    @staticmethod
    def _rich_table(headers: list[str], rows: list[list[str]], footer: str) -> str:
        from rich.console import Console
        from rich.table import Table

        # title and footer are lines of their own: as rich's title/caption they would wrap to the
        # table's width (unreadable in a log file)
        table = Table()
        table.add_column(headers[0], justify="left")
        for h in headers[1:]:
            table.add_column(h, justify="right")
        for r in rows:
            table.add_row(*r)
        buffer = io.StringIO()
        width = max(len(r[0]) for r in rows) + 8 * (len(headers) - 1) + 8
        Console(file=buffer, width=max(60, width), color_system=None).print(table)
        lines = [line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()]
        return "\n".join(["R: score (x100) on task j after training through task i", *lines, footer])

    def heatmap(self, path: str | os.PathLike, title: str | None = None, relative: bool = False,
                general: Mapping[int, Mapping] | None = None) -> Path:
        """Save R as an annotated heatmap (scores x 100, unmeasured cells blank) to ``path``
        (PNG by default; the suffix picks the format). With a base row R_0 it is drawn on top
        ("0. base"). ``relative=True`` shows every score as % of the base model's score on that
        task, as the paper's heatmaps do (needs R_0; blank where R_0 is 0). Uses matplotlib's Agg
        backend, so no display is needed. Returns the path.

        ``general``: {row i: GP/IP after stage i+1, a `slice_trl.evaluation.general.summarize` dict}; when
        given, a second panel shows GP and IP per stage as the change from the base model (x100,
        as the paper's figures do), blank where they were not measured."""
        import matplotlib
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        T = self.num_tasks
        grid = self.relative_to_base() if relative else self.matrix  # raises without R_0 when relative
        rows = ([[1.0 if relative and b else (None if relative else b) for b in self.base]]
                if self.base is not None else []) + grid
        data = np.array([[np.nan if v is None else 100.0 * v for v in row] for row in rows], dtype=float)
        labels = [n if len(n) <= 24 else n[:21] + "..." for n in self.task_names]
        row_labels = (["0. base"] if self.base is not None else []) + [f"{i + 1}. {lab}" for i, lab in enumerate(labels)]
        size = max(4.0, 0.9 * len(rows) + 2.5)
        # A Figure on an Agg canvas, without pyplot: no display, no global backend switch, and
        # nothing left open in pyplot's figure registry.
        general = {i: g for i, g in (general or {}).items() if g and g.get("change")}
        fig = Figure(figsize=(max(4.0, 0.9 * T + 2.5) + 1.0 + (2.6 if general else 0.0), size))
        FigureCanvasAgg(fig)
        if general:
            spec = fig.add_gridspec(1, 2, width_ratios=[max(T, 2), 2.2])
            ax = fig.add_subplot(spec[0, 0])
            _general_panel(fig, fig.add_subplot(spec[0, 1]), general, T)
        else:
            ax = fig.add_subplot(1, 1, 1)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")  # unmeasured cells blank
        vmax = max(100.0, float(np.nanmax(data))) if relative and np.isfinite(data).any() else 100.0
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the base model's score" if relative
                     else "score x100")
        ax.set_xticks(range(T), labels=labels, rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), labels=row_labels)
        ax.set_xlabel("evaluated on task j")
        ax.set_ylabel("after training through task i")
        for i in range(len(rows)):
            for j in range(T):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.0f}" if relative else f"{data[i, j]:.1f}", ha="center",
                            va="center", color="white" if data[i, j] < 0.6 * vmax else "black", fontsize=9)
        if title is None:
            title = "R as % of the base model" if relative else "R"
        off = self.base is not None  # above the diagonal: task i before it was trained (raw scores only)
        for (i, j), text in [((i - 1, i), f"({100 * v:.1f})") for i, v in self.upcoming.items() if not relative] + [
                (ij, "not\nscored") for ij in self.unscored]:
            ax.text(j, i + off, text, ha="center", va="center", fontsize=8, style="italic", color="grey")
        if self.completed:
            title += f"\nAP {_x100(self.ap())}  FP {_x100(self.fp())}  Fgt {_x100(self.forgetting(), 1, '+')}"
        ax.set_title(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")  # long task names: keep the axis labels in the frame
        return path


def _x100(v: float | None, digits: int = 1, sign: str = "") -> str:
    """A score x100 for a footer, "n/a" when it could not be computed (never 0)."""
    return "n/a" if v is None else f"{100 * v:{sign}.{digits}f}"


def _general_panel(fig, ax, general: Mapping[int, Mapping], T: int) -> None:
    """GP/IP change from the base model (x100) per stage: rows = stages, columns GP, IP; a
    diverging colour map centred on 0 (red = lost general ability)."""
    import matplotlib
    import numpy as np

    data = np.full((T, 2), np.nan)
    for i, g in general.items():
        data[i] = [100.0 * g["change"]["GP"], 100.0 * g["change"]["IP"]]
    bound = max(1.0, float(np.nanmax(np.abs(data))))
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.1, pad=0.08, label="change from base x100")
    ax.set_xticks(range(2), labels=["GP", "IP"])
    ax.set_yticks(range(T), labels=[str(i + 1) for i in range(T)])
    ax.set_ylabel("after stage")
    for i in range(T):
        for j in range(2):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:+.1f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(data[i, j]) > 0.6 * bound else "black")
    base = next(iter(general.values()))["base"]
    ax.set_title(f"GP / IP vs base\n(base GP {100 * base['GP']:.1f}, IP {100 * base['IP']:.1f})", fontsize=9)
