"""Tasks of the continual benchmarks in the O-LoRA / SAPT folder format (``CL_Benchmark/``):
SuperNI-15, Long Sequence, Standard CL (docs/benchmarks.md).

One folder per task with ``train.json``, ``dev.json`` and ``test.json``, each a
natural-instructions object ("Definition", "Instances" with "input" and "output"; "output" is a
string or a list of strings), and for label tasks ``labels.json`` (a JSON list of the labels).

The benchmark's own split is used, never re-split: the model trains on ``train.json`` and is
scored on ``test.json``. ``dev.json`` is not read: in the distributed data it is byte-identical to
``test.json`` (data README), so it is no separate validation set. ``max_train`` / ``max_eval`` cap
the two splits with a seeded sample (the files can be ordered by label), recorded in ``info``;
a test split smaller than ``max_eval`` is scored whole, with a note. A list output is trained and
scored against its first string (SAPT draws one at random).

Prompts are the benchmark's own (SAPT's ``cl_dataset.py``, zero-shot), as the user turn:
- a folder without labels.json (SuperNI): ``"Definition: {definition}\\n\\nNow complete the
  following example -\\nInput: {input}\\nOutput: "``;
- a label folder (Long Sequence, Standard CL): ``"{definition}\\n{input}\\nOutput: "``.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from slice_trl.utils.registry import task_sources
from slice_trl.tasks.base import LoadOptions, Task, make_task, read_json, user_prompt_example
from slice_trl.tasks.spec import MissingDataError

REQUIRED_FILES = ("train.json", "test.json")


def resolve_benchmark_dir(path: str | Path, task: str | None = None, origin: str | None = None) -> Path:
    """The task folder: ``path`` when it holds train.json, else ``path/<task>``. A missing folder or
    file is a FileNotFoundError naming it and where the benchmark comes from (``origin``)."""
    path = Path(path)
    where = path / task if task and not (path / "train.json").is_file() else path
    get = f" Get the data from {origin}." if origin else ""
    if not where.is_dir():
        raise FileNotFoundError(f"task folder {str(where)!r} does not exist.{get}")
    for name in REQUIRED_FILES:
        if not (where / name).is_file():
            raise FileNotFoundError(f"task folder {str(where)!r} has no {name} (it has "
                                    f"{sorted(p.name for p in where.glob('*.json'))}).{get}")
    return where


def read_labels(folder: Path) -> list[str] | None:
    """labels.json of a label task (a JSON list of strings), or None when the folder has none."""
    file = folder / "labels.json"
    if not file.is_file():
        return None
    labels = read_json(file)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{str(file)!r} must be a JSON list of label strings, e.g. [\"entailment\", \"neutral\"]; "
                         f"got {type(labels).__name__}.")
    return labels


def read_split(file: Path) -> tuple[str, list[dict]]:
    """``(definition, [{"input", "output"}])`` of one split file (output: its first string)."""
    data = read_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("Instances"), list):
        raise ValueError(f"{str(file)!r} is not a benchmark split: expected a natural-instructions object with an "
                         "'Instances' list.")
    definition = data.get("Definition") or ""
    definition = (definition[0] if isinstance(definition, list) and definition else str(definition)).strip()
    rows = []
    for inst in data["Instances"]:
        out = inst.get("output") if isinstance(inst, dict) else None
        out = out[0] if isinstance(out, list) and out else out
        if isinstance(out, str) and out.strip() and "input" in inst:
            rows.append({"input": str(inst["input"]), "output": out})
    if not rows:
        raise ValueError(f"{str(file)!r} has no instance with an input and an output.")
    return definition, rows


def prompt_text(definition: str, input_text: str, labelled: bool) -> str:
    """The benchmark's zero-shot prompt (module docstring); the definition may be emptied by length fitting."""
    if labelled:
        return f"{definition}\n{input_text}\nOutput: " if definition else f"{input_text}\nOutput: "
    head = f"Definition: {definition}\n\n" if definition else ""
    return f"{head}Now complete the following example -\nInput: {input_text}\nOutput: "


def _capped(rows: list[dict], cap: int | None, seed: int) -> list[dict]:
    if cap is None or cap >= len(rows):
        return rows
    return Dataset.from_list(rows).shuffle(seed=seed).select(range(cap)).to_list()


def load_cl_benchmark_task(path: str | Path, task: str | None = None, options: LoadOptions | None = None,
                           origin: str | None = None, **kwargs) -> Task:
    """One task folder as a `Task`: train = ``train.json`` (capped at ``max_train``), eval =
    ``test.json`` (capped at ``max_eval``), both seeded samples (``seed``). ``metric`` defaults to
    ``sni_exact_match`` for a label task and ``sni_rougeL`` otherwise (the authors' scorers).
    ``info`` records the folder, the full and used split sizes, the labels and any note."""
    opts = LoadOptions.of(options, **kwargs)
    folder = resolve_benchmark_dir(path, task, origin)
    labels = read_labels(folder)
    definition, train = read_split(folder / "train.json")
    _, test = read_split(folder / "test.json")  # the same definition as train.json
    notes = []
    if opts.max_eval is not None and len(test) < opts.max_eval:
        notes.append(f"test split has {len(test)} examples, fewer than max_eval={opts.max_eval}: all are scored")
    info = {"source": "cl_benchmark", "path": str(folder), "n_train_total": len(train), "n_test_total": len(test),
            "max_train": opts.max_train, "max_eval": opts.max_eval, "split_seed": opts.seed,
            "split": "the benchmark's own: train.json -> train, test.json -> eval (dev.json = test.json, unused)"}
    if labels is not None:
        info["labels"] = labels
        outside = sorted({r["output"] for r in train + test} - set(labels))
        if outside:
            notes.append(f"answers not in labels.json: {outside[:5]}")
    if notes:
        info["notes"] = notes
    metric = opts.metric or ("sni_exact_match" if labels is not None else "sni_rougeL")
    info["metric_reason"] = "set in the recipe" if opts.metric else (
        "a label task (labels.json): exact match of the label" if labels is not None else "free-form: ROUGE-L")

    def to_parts(row):
        # Shortening order: the input first, then the definition; the output is never cut.
        def render(pieces):
            return user_prompt_example(prompt_text(pieces[1], pieces[0], labels is not None), row["output"])

        return [row["input"], definition], render

    # both caps are seeded samples here, so make_task's own max_train cut is a no-op
    return make_task(opts.name or folder.name, _capped(train, opts.max_train, opts.seed),
                     _capped(test, opts.max_eval, opts.seed), to_parts, metric, info, opts)


def validate_spec(spec) -> None:
    """A recipe's cl_benchmark entry (`TaskSpec`): a local task folder (or the benchmark's root with
    task=) that exists."""
    if spec.path is None or spec.dataset_id is not None:
        raise spec.error("source='cl_benchmark' reads a local task folder: set path= (the folder, or the benchmark's "
                         "root with task=) and no dataset_id=.")
    spec.check_path_exists()
    try:
        resolve_benchmark_dir(spec.path, spec.task, spec.origin)
    except FileNotFoundError as exc:
        raise MissingDataError(spec.error(str(exc)).args[0]) from None


@task_sources.register("cl_benchmark", validate=validate_spec, whole_eval=True)  # max_eval None: the test split
def load_spec(spec, options: LoadOptions) -> Task:
    """The task a validated cl_benchmark `TaskSpec` names."""
    return load_cl_benchmark_task(spec.path, spec.task, options, origin=spec.origin)
