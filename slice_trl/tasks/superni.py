"""Super-NaturalInstructions tasks (docs/method.md, "Paper's training setup").

Sources:
- a natural-instructions task file (allenai/natural-instructions ``tasks/<name>.json``): one JSON
  object with "Definition" (a list holding one string), "Instances" (each ``{"id", "input",
  "output": [str, ...]}``), "Positive Examples", "Negative Examples" and metadata keys in any
  order. Read with Python's json module because some files hold ``NaN`` (e.g. ``"URL": [NaN]``);
- a directory of such files plus a task name, full (``task088_identify_typo_verification``) or
  short (``task088``);
- a Hub dataset with one row per instance and a task-name column (e.g.
  ``Muennighoff/natural-instructions``: ``task_name, id, definition, inputs, targets``).

Each instance becomes the conversational record ``{"prompt": [{"role": "user", "content":
Definition + "\\n\\nInput: " + input}], "completion": [{"role": "assistant", "content":
first output}]}``. Instances with no output are skipped (counted in ``info``). Positive and
negative examples are not used: the paper trains zero-shot prompts.
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets import Dataset

from slice_trl.utils.registry import task_sources
from slice_trl.configs.settings import suggest
from slice_trl.tasks.base import (
    LoadOptions,
    Task,
    load_hub_dataset,
    make_task,
    read_json,
    split_train_eval,
    user_prompt_example,
)
from slice_trl.tasks.spec import MissingDataError

# docs/method.md, "Evaluation and metrics": classification-like tasks are scored by exact match,
# every other Super-NI task by ROUGE-L.
EXACT_MATCH_TASKS = ("task088", "task1510", "task363")

LOCAL_HINT = (
    "Point the task at local natural-instructions files instead: path=<task .json file>, or "
    "path=<directory of task files> with task=<name such as task088_identify_typo_verification or task088>."
)


def short_id(task_name: str) -> str:
    """``task088_identify_typo_verification`` -> ``task088``; other names are returned as is."""
    m = re.match(r"^(task\d+)(?:_|$)", task_name)
    return m.group(1) if m else task_name


# A closed label set: at most this many distinct answers, each seen on average at least
# MIN_PER_LABEL times, not all numbers (a count or a sum is an open-ended value, e.g. task243).
MAX_LABELS = 20
MIN_PER_LABEL = 5
_NUMBER_RE = re.compile(r"^[+-]?\d+(\.\d+)?$")


def closed_label_set(outputs) -> list[str] | None:
    """The sorted label set when ``outputs`` (one reference answer per instance) come from a
    small closed set of non-numeric labels (classification: sentiment, emotion, yes/no), else
    None (free-form generation, or numeric answers)."""
    outputs = [o.strip() for o in outputs]
    labels = sorted(set(outputs))
    if not outputs or len(labels) > MAX_LABELS or len(outputs) < MIN_PER_LABEL * len(labels):
        return None
    if all(_NUMBER_RE.match(label) for label in labels):
        return None
    return labels


def choose_metric(task_name: str, outputs=None) -> tuple[str, str]:
    """``(metric, why)`` for a Super-NI task: exact match for the paper's exact-match tasks
    (task088, task1510, task363) and for a closed label set (`closed_label_set` of the
    instances' first outputs), ROUGE-L ("rougeL") for free-form generation."""
    if short_id(task_name) in EXACT_MATCH_TASKS:
        return "exact_match", "the paper scores it by exact match"
    labels = closed_label_set(outputs) if outputs is not None else None
    if labels is not None:
        shown = ", ".join(labels[:6]) + (", ..." if len(labels) > 6 else "")
        return "exact_match", f"a closed label set of {len(labels)} answers ({shown})"
    if outputs is None:
        return "rougeL", "not a paper exact-match task (its answers were not inspected)"
    distinct = {o.strip() for o in outputs}
    kind = "numeric answers, an open-ended value" if all(_NUMBER_RE.match(o) for o in distinct) else "free-form answers"
    return "rougeL", f"{kind} ({len(distinct)} distinct in {len(outputs)})"


def default_metric(task_name: str, outputs=None) -> str:
    """The metric of `choose_metric`."""
    return choose_metric(task_name, outputs)[0]


def prompt_text(definition: str, input_text: str) -> str:
    """Definition, a blank line, ``"Input: " + input`` (just the input line if the definition is
    empty, e.g. after length fitting removed it)."""
    return f"{definition}\n\nInput: {input_text}" if definition else f"Input: {input_text}"


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # "Definition" is a one-string list in the task files
        return "\n".join(_text(v) for v in value)
    return str(value)


def _first_output(output) -> str | None:
    if isinstance(output, list):
        return _text(output[0]) if output else None
    return _text(output) if output not in (None, "") else None


def resolve_task_file(path: str | Path, task: str | None = None) -> Path:
    """The task file: ``path`` itself when it is a file, else ``path/<task>.json`` or the single
    ``path/<task>_*.json`` for a short id such as ``task088``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"Super-NI path {str(path)!r} does not exist. {LOCAL_HINT}")
    if not task:
        raise ValueError(
            f"Super-NI path {str(path)!r} is a directory: also give task=<task name>, e.g. "
            "task088_identify_typo_verification or task088."
        )
    stem = task[:-5] if task.endswith(".json") else task
    exact = path / f"{stem}.json"
    if exact.is_file():
        return exact
    matches = sorted(path.glob(f"{stem}_*.json"))
    if len(matches) == 1:
        return matches[0]
    available = sorted(p.stem for p in path.glob("*.json"))
    if len(matches) > 1:
        raise ValueError(
            f"Super-NI task {task!r} matches several files in {str(path)!r}: "
            f"{[m.name for m in matches]}; give the full task name."
        )
    raise FileNotFoundError(
        f"No Super-NI task file for {task!r} in {str(path)!r}.{suggest(stem, available, n=3, cutoff=0.5)} "
        f"Available: {available[:20]}"
        f"{' ...' if len(available) > 20 else ''}"
    )


def read_task_file(file: str | Path) -> tuple[str, list[dict]]:
    """``(definition, instances)`` of a natural-instructions task file, after format checks."""
    file = Path(file)
    data = read_json(file)  # Python's json accepts the NaN some task files contain
    if not isinstance(data, dict) or "Instances" not in data or "Definition" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{str(file)!r} is not a natural-instructions task file: expected a JSON object with "
            f"'Definition' and 'Instances' keys, found {keys}."
        )
    instances = data["Instances"]
    if not isinstance(instances, list) or not all(isinstance(x, dict) and "input" in x and "output" in x
                                                  for x in instances):
        raise ValueError(f"{str(file)!r}: every entry of 'Instances' must be an object with 'input' and 'output'.")
    return _text(data["Definition"]), instances


def _hub_rows(dataset_id: str, task: str, split: str | None, revision: str | None) -> tuple[str, str, list[dict]]:
    """``(full task name, definition, rows)`` of one task from a Hub dataset (all splits pooled
    unless ``split`` is given: a task's instances may sit in either split of such a dataset)."""
    from datasets import DatasetDict, concatenate_datasets

    loaded = load_hub_dataset(dataset_id, LOCAL_HINT, split=split, revision=revision)
    ds = concatenate_datasets(list(loaded.values())) if isinstance(loaded, DatasetDict) else loaded
    cols = ds.column_names

    def pick(options, what):
        for c in options:
            if c in cols:
                return c
        raise ValueError(f"Hub dataset {dataset_id!r} has no {what} column (looked for {list(options)}; "
                         f"it has {cols}).")

    task_col = pick(("task_name", "task"), "task-name")
    def_col = pick(("definition", "Definition"), "definition")
    in_col = pick(("inputs", "input"), "input")
    out_col = pick(("targets", "output", "outputs"), "output")
    names = ds.unique(task_col)
    full = [n for n in names if n == task]
    if not full and task.startswith("task"):  # a short id such as task088
        full = [n for n in names if short_id(n) == short_id(task)]
    if len(full) != 1:
        raise ValueError(
            f"Task {task!r} is {'ambiguous' if full else 'not'} in Hub dataset {dataset_id!r}"
            f"{' (' + ', '.join(full) + ')' if full else ''}.{suggest(task, names, n=3, cutoff=0.5)}"
        )
    ds = ds.filter(lambda name: name == full[0], input_columns=task_col)
    definition = _text(ds[0][def_col]) if len(ds) else ""
    rows = [{"input": r[in_col], "output": r[out_col]} for r in ds]
    return full[0], definition, rows


def load_superni_task(path: str | Path | None = None, task: str | None = None, dataset_id: str | None = None,
                      options: LoadOptions | None = None, **kwargs) -> Task:
    """Load one Super-NI task as a `Task` (conversational prompt/completion records).

    Give ``path`` (a task file, or a directory with ``task``), or ``dataset_id`` with ``task``.
    ``options`` and/or ``kwargs`` are `LoadOptions` fields (``max_eval=3, tokenizer=tok, ...``).
    The instances are split with `split_train_eval` (seed 42, ``min(max_eval, n-1)`` held out);
    ``max_train`` caps the training rows; with ``tokenizer`` and ``max_length`` every example is
    fitted to the budget (input shortened first, then the definition; see `fit_prompt`).
    ``metric`` defaults to `choose_metric` of the task name and its answers (``info["metric_reason"]``
    says why). ``name`` defaults to the full task
    name. ``info`` records the source, the split sizes, skipped instances and the fitting counts.
    """
    opts = LoadOptions.of(options, **kwargs)
    if (path is None) == (dataset_id is None):
        raise ValueError("Give exactly one of path= (local natural-instructions files) or dataset_id= (Hub dataset).")
    if path is not None:
        file = resolve_task_file(path, task)
        task_name = file.stem
        definition, instances = read_task_file(file)
        info = {"source": "superni", "path": str(file)}
    else:
        if not task:
            raise ValueError(f"Loading Super-NI from Hub dataset {dataset_id!r} needs task=<task name>, e.g. task088.")
        task_name, definition, instances = _hub_rows(dataset_id, task, opts.split, opts.revision)
        info = {"source": "superni", "dataset_id": dataset_id, "split": opts.split, "revision": opts.revision}

    rows, skipped = [], 0
    for inst in instances:
        out = _first_output(inst.get("output"))
        if out is None:
            skipped += 1  # an instance without a reference answer can be neither trained nor scored
            continue
        rows.append({"input": _text(inst.get("input")), "output": out})
    if len(rows) < 2:
        raise ValueError(f"Super-NI task {task_name!r} has {len(rows)} usable instance(s); at least 2 are needed.")
    train_raw, eval_raw = split_train_eval(Dataset.from_list(rows), seed=opts.seed, max_eval=opts.max_eval)

    def to_parts(row):
        # Shortening order: the input first, then the definition; the output is never cut.
        def render(pieces):
            return user_prompt_example(prompt_text(pieces[1], pieces[0]), row["output"])

        return [row["input"], definition], render

    if opts.metric is None:
        metric, why = choose_metric(task_name, [r["output"] for r in rows])
    else:
        metric, why = opts.metric, "set in the recipe"
    info.update(task=task_name, n_instances=len(instances), skipped_no_output=skipped, split_seed=opts.seed,
                max_eval=opts.max_eval, metric_reason=why)
    return make_task(opts.name or task_name, train_raw, eval_raw, to_parts, metric, info, opts)


def validate_spec(spec) -> None:
    """A recipe's superni entry (`TaskSpec`): one of path/dataset_id; a local file (or directory with
    task=) that holds the task; normalises ``spec.task`` to the full task name."""
    spec.one_location("natural-instructions task file or directory")
    if spec.dataset_id is not None:
        if not spec.task:
            raise spec.error("task= is required with dataset_id= (e.g. task088_identify_typo_verification).")
        return
    spec.check_path_exists()
    if Path(spec.path).is_dir() and not spec.task:
        raise spec.error(f"path={spec.path!r} is a directory: set task= (e.g. task088 or "
                         "task088_identify_typo_verification).")
    try:
        file = resolve_task_file(spec.path, spec.task)
    except FileNotFoundError as exc:  # the directory exists but lacks this task's file
        raise MissingDataError(spec.error(f"task={spec.task!r}: {exc}").args[0]) from None
    except ValueError as exc:
        raise spec.error(f"task={spec.task!r}: {exc}") from None
    spec.task = file.stem  # the full name, also for a short id such as task088


@task_sources.register("superni", validate=validate_spec)
def load_spec(spec, options: LoadOptions) -> Task:
    """The task a validated superni `TaskSpec` names."""
    return load_superni_task(spec.path, spec.task, spec.dataset_id, options)
