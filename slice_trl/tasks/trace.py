"""TRACE tasks (BeyonderXX/TRACE): C-STANCE, FOMC, MeetingBank, Py150, ScienceQA, NumGLUE-cm.

TRACE's own format: a task directory with ``train.json``, ``eval.json`` and ``test.json``, each
a JSON list of ``{"prompt": str, "answer": str}``. A record becomes the conversational record
``{"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant",
"content": answer}]}``; the prompt is used as is (it already holds the instruction and the
answer cue, e.g. FOMC's "...\\nStance:").

Which file is split, and why: by default ONLY ``train.json`` is read, and it is split with the
paper's protocol (`split_train_eval`: shuffle with seed 42, hold out ``min(200, n-1)``).
- It is what the paper's protocol says ("each task: shuffle with seed 42, hold out min(200, n-1)
  examples for evaluation") and what the reference code does (it loads ``train.json`` only), so
  the held-out examples are drawn the same way as for Super-NI and the scores are comparable
  across the two benchmarks.
- TRACE's ``eval.json`` and ``test.json`` are the same file in the distributed data (byte-identical
  for FOMC), so they cannot serve as separate validation and test sets; leaving them untouched
  keeps TRACE's official test set clean for a separate, final evaluation.
``files=`` pools other files into the split (e.g. ``("train.json", "eval.json")``); doing so
with a test file mixes the official test set into training.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from slice_trl.utils.registry import task_sources
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

TRACE_TASKS = ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm")
DEFAULT_FILES = ("train.json",)

LOCAL_HINT = (
    "Point the task at a local TRACE task directory instead: path=<dir with train.json, eval.json, "
    "test.json>, or path=<TRACE data root> with task=<task folder name such as FOMC>."
)


def resolve_task_dir(path: str | Path, task: str | None = None) -> Path:
    """``path`` when it holds TRACE files (or is one JSON file), else ``path/<task>``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"TRACE path {str(path)!r} does not exist. {LOCAL_HINT}")
    if path.is_file() or (path / "train.json").is_file():
        return path
    if task and (path / task).is_dir():
        return path / task
    subdirs = sorted(p.name for p in path.iterdir() if p.is_dir())
    raise FileNotFoundError(
        f"{str(path)!r} is not a TRACE task directory (no train.json)"
        f"{'' if not task else f' and has no task folder {task!r}'}. Task folders found there: {subdirs}. {LOCAL_HINT}"
    )


def read_records(file: str | Path) -> list[dict]:
    """A TRACE JSON file: a list of ``{"prompt": str, "answer": str}``, checked."""
    file = Path(file)
    data = read_json(file)
    if not isinstance(data, list) or not all(isinstance(r, dict) and "prompt" in r and "answer" in r for r in data):
        raise ValueError(f"{str(file)!r} is not a TRACE file: expected a JSON list of {{'prompt', 'answer'}} records.")
    return [{"prompt": str(r["prompt"]), "answer": str(r["answer"])} for r in data]


def load_trace_task(path: str | Path | None = None, task: str | None = None, dataset_id: str | None = None,
                    options: LoadOptions | None = None, *, files=DEFAULT_FILES, **kwargs) -> Task:
    """Load one TRACE task as a `Task` (see the module docstring for the split).

    Local: ``path`` = the task directory (or a TRACE root plus ``task``, or one JSON file);
    ``files`` are the file names pooled before splitting. Hub: ``dataset_id`` (``task`` used as
    the config name if given), ``split`` default "train", columns ``prompt`` and ``answer``.
    ``options`` and/or ``kwargs`` are `LoadOptions` fields (``max_eval=10, tokenizer=tok, ...``).
    ``metric`` defaults to "rougeL" (docs/method.md scores all six TRACE tasks by ROUGE-L). Length
    fitting shortens the prompt from its middle (its instruction head and answer cue stay).
    """
    opts = LoadOptions.of(options, **kwargs)
    if (path is None) == (dataset_id is None):
        raise ValueError("Give exactly one of path= (local TRACE task directory) or dataset_id= (Hub dataset).")
    if path is not None:
        where = resolve_task_dir(path, task)
        if where.is_file():
            used = [where]
        else:
            if isinstance(files, str):
                files = (files,)
            used = [where / f for f in files]
            missing = [str(f) for f in used if not f.is_file()]
            if missing:
                present = sorted(p.name for p in where.glob("*.json"))
                raise FileNotFoundError(f"TRACE files {missing} do not exist; {str(where)!r} has {present}.")
        records = [r for f in used for r in read_records(f)]
        task_name = task or (where.stem if where.is_file() else where.name)
        info = {"source": "trace", "path": str(where), "files": [f.name for f in used]}
    else:
        split = opts.split or "train"
        loaded = load_hub_dataset(dataset_id, LOCAL_HINT, name=task, split=split, revision=opts.revision)
        missing = [c for c in ("prompt", "answer") if c not in loaded.column_names]
        if missing:
            raise ValueError(f"Hub dataset {dataset_id!r} lacks TRACE column(s) {missing}; "
                             f"it has {loaded.column_names}.")
        records = [{"prompt": str(r["prompt"]), "answer": str(r["answer"])} for r in loaded]
        task_name = task or dataset_id.rsplit("/", 1)[-1]
        info = {"source": "trace", "dataset_id": dataset_id, "split": split, "revision": opts.revision}

    train_raw, eval_raw = split_train_eval(Dataset.from_list(records), seed=opts.seed, max_eval=opts.max_eval)

    def to_parts(row):
        def render(pieces):
            return user_prompt_example(pieces[0], row["answer"])

        return [row["prompt"]], render

    info.update(task=task_name, n_records=len(records), split_seed=opts.seed, max_eval=opts.max_eval)
    return make_task(opts.name or task_name, train_raw, eval_raw, to_parts, opts.metric or "rougeL", info, opts)


def validate_spec(spec) -> None:
    """A recipe's trace entry (`TaskSpec`): one of path/dataset_id; the task directory exists and
    holds every file of ``files``."""
    spec.one_location("TRACE task directory")
    if spec.dataset_id is not None:
        return
    spec.check_path_exists()
    try:
        where = resolve_task_dir(spec.path, spec.task)
    except FileNotFoundError as exc:
        raise MissingDataError(spec.error(f"path/task: {exc}").args[0]) from None
    if spec.files is not None:
        if isinstance(spec.files, str):
            spec.files = [spec.files]
        if not spec.files or where.is_file():
            raise spec.error("files= must list file names inside the TRACE task directory, e.g. [train.json].")
        missing = [f for f in spec.files if not (where / f).is_file()]
        if missing:
            raise spec.error(f"files {missing} are not in {str(where)!r} (it has "
                             f"{sorted(p.name for p in where.glob('*.json'))}).")


@task_sources.register("trace", validate=validate_spec, fields=("files",))
def load_spec(spec, options: LoadOptions) -> Task:
    """The task a validated trace `TaskSpec` names."""
    files = tuple(spec.files) if spec.files else DEFAULT_FILES
    return load_trace_task(spec.path, spec.task, spec.dataset_id, options, files=files)
