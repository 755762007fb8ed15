"""Task loaders: recipe entries (`TaskSpec`) -> `Task` objects the trainer consumes.

    spec = TaskSpec(source="superni", path="../shared/data/superni", task="task088")
    task = build_task(spec, tokenizer=tok, max_length=256)   # split, formatted, length-fitted

Sources: "superni" (natural-instructions task files or a Hub dataset), "trace" (TRACE task
directories or a Hub dataset), "generic" (any prompt/completion or messages dataset),
"builtin" (the offline conflicting suite of `builtin.py`), "hub_splits" (prepared splits pushed
by this project), "cl_benchmark" (O-LoRA/SAPT benchmark task folders, their own train/test split).
Each source's module registers its loader and validator in `slice_trl.utils.registry.task_sources`
(a new source is one new module here, or a package of your own through the
``slice_trl.task_sources`` entry point group). Named benchmark sequences (``sequence: superni15/order1``) are in `sequences.py`. `TaskSpec` (spec.py) checks everything it can without loading data or a model;
`build_task` / `build_tasks` here load, split and fit. The loaders can also be called directly,
with `LoadOptions` fields as keywords (base.py).
"""

from __future__ import annotations

from slice_trl.utils.registry import task_sources
from slice_trl.configs.settings import duplicate_names
from slice_trl.tasks.base import (
    LoadOptions,
    Task,
    fit_prompt,
    is_network_error,
    sequence_length,
    sequence_lengths,
    split_train_eval,
    validate_tasks,
)
from slice_trl.tasks.builtin import BUILTIN_TASKS, builtin_suite, builtin_task
from slice_trl.tasks.cl_benchmark import load_cl_benchmark_task
from slice_trl.tasks.generic import load_generic_task, load_hub_splits_task
from slice_trl.tasks.spec import MissingDataError, TaskSpec
from slice_trl.tasks.superni import default_metric, load_superni_task, resolve_task_file
from slice_trl.tasks.trace import DEFAULT_FILES, load_trace_task, resolve_task_dir

__all__ = [
    "MissingDataError", "BUILTIN_TASKS", "Task", "TaskSpec", "LoadOptions", "validate_tasks",
    "build_task", "build_tasks", "split_train_eval", "fit_prompt", "sequence_length", "sequence_lengths", "builtin_suite",
    "builtin_task", "load_superni_task", "load_trace_task", "load_generic_task", "load_hub_splits_task",
    "default_metric", "resolve_task_file", "resolve_task_dir", "load_cl_benchmark_task",
]


def build_task(spec: TaskSpec, tokenizer=None, max_length: int | None = None) -> Task:
    """Load, split, format and (with ``tokenizer`` and ``max_length``) length-fit one task."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"build_task expects a TaskSpec, got {type(spec).__name__}; use TaskSpec.from_dict(...).")
    spec.validate()
    return task_sources.get(spec.source).obj(spec, spec.load_options(tokenizer, max_length))


def build_tasks(specs, tokenizer=None, max_length: int | None = None, *, local_only: bool = False,
                error: type[Exception] | None = None) -> list[Task]:
    """`build_task` for each spec, in order; names must be unique (they key the R matrix).

    ``local_only`` skips the specs read from the Hub (a dry run reads the local data only).
    ``error`` (e.g. `slice_trl.cli.recipe.RecipeError`): a data problem (bad or missing data, an
    unreachable Hub) is raised as one ``error`` naming the task, ``tasks[i] (name): ...``, and an
    unreachable Hub says how to use local files instead; without it the loader's own exception
    propagates."""
    specs = list(specs)
    dupes = duplicate_names(s.display_name for s in specs)
    if dupes:
        raise (error or ValueError)(f"Task names must be unique within a sequence; repeated: {dupes}. "
                                    "Set name= on the repeats.")
    tasks = []
    for i, spec in enumerate(specs):
        if local_only and spec.dataset_id:
            continue
        try:
            tasks.append(build_task(spec, tokenizer, max_length))
        except Exception as err:
            reason = None if error is None else _data_problem(spec, err)
            if reason is None:
                raise
            raise error(f"tasks[{i}] ({spec.display_name}): {reason}") from None
    return tasks


def _data_problem(spec: TaskSpec, err: Exception) -> str | None:
    """What a failed `build_task` of ``spec`` tells the user, or None when ``err`` is not a data
    problem (a bug, which must surface with its traceback)."""
    if isinstance(err, (ValueError, OSError)):  # bad data; missing files and an offline Hub are OSErrors
        return str(err)
    if not is_network_error(err):  # an HTTP client's own transport errors (dropped connection, timeout)
        return None
    where = f"dataset {spec.dataset_id!r}" if spec.dataset_id else "its data"
    return (f"could not reach the Hugging Face Hub for {where}: this machine appears offline or the Hub cannot be "
            f"reached ({type(err).__name__}: {err}). Point the task at local files instead (path=<local file or "
            "directory> in place of dataset_id=, relative to data_dir), or retry online.")
