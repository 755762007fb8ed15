"""The pool file: `load_pool` reads and validates it (`Pool`, `CalibrationConfig`) without loading
any model or data set; every problem is a `PoolError` that names the key and the fix."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from slice_trl.configs.settings import reject_unknown_keys
from slice_trl.mining.sketch import HASH_PRIME


class PoolError(ValueError):
    """A problem with the pool file or the command's arguments (reported without a traceback)."""


def positive_int(where: str, value, allow_none: bool = False) -> int | None:
    """``value`` if it is an integer >= 1 (or None with ``allow_none``), else a PoolError naming ``where``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PoolError(f"{where}={value!r} must be an integer >= 1{' or null' if allow_none else ''}.")
    return value


@dataclasses.dataclass
class CalibrationConfig:
    """The calibration sample of each task: ``batches`` mini-batches of ``batch_size`` training
    examples (reference CLI default: 4 x 4), sequences fitted to ``max_length`` tokens."""

    batches: int = 4
    batch_size: int = 4
    max_length: int = 256
    micro_batch_size: int | None = None
    completion_only_loss: bool | None = None  # None: TRL's default (completion-only for prompt/completion data)

    @classmethod
    def from_dict(cls, data) -> "CalibrationConfig":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PoolError(f"calibration={data!r} must be a mapping such as "
                            "{batches: 4, batch_size: 4, max_length: 256}.")
        reject_unknown_keys(data, sorted(f.name for f in dataclasses.fields(cls)), "calibration", noun="key",
                            error=PoolError)
        cfg = cls(**data)
        for key in ("batches", "batch_size", "max_length"):
            positive_int(f"calibration.{key}", getattr(cfg, key))
        positive_int("calibration.micro_batch_size", cfg.micro_batch_size, allow_none=True)
        if cfg.completion_only_loss not in (None, True, False):
            raise PoolError(f"calibration.completion_only_loss={cfg.completion_only_loss!r} must be true, false "
                            "or null.")
        return cfg


@dataclasses.dataclass
class Pool:
    """A validated pool file. ``tasks`` are TaskSpec mappings with absolute paths and a name."""

    model: str
    tasks: list[dict]
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    sketch_size: int = 200_000
    seed: int = 42
    dtype: str = "float32"
    target_modules: list[str] | None = None
    source: str = ""  # the pool file, for messages

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.tasks]


POOL_KEYS = ("model", "tasks", "calibration", "sketch_size", "seed", "dtype", "target_modules")
_DTYPES = ("float32", "bfloat16", "float16")


def make_spec(entry: Mapping):
    """A `slice_trl.tasks.TaskSpec` from a mapping (its own validation; errors re-raised as
    PoolError)."""
    from slice_trl.tasks import TaskSpec

    try:
        return TaskSpec.from_dict(dict(entry))
    except (TypeError, ValueError) as exc:
        raise PoolError(f"task {entry.get('name') or entry.get('task') or entry.get('path')!r}: {exc}") from exc


def spec_dict(spec) -> dict:
    """A TaskSpec as a plain mapping without unset (None) fields, for hashing."""
    return {k: v for k, v in spec.to_dict().items() if v is not None}


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(str(value)))
    return str(p if p.is_absolute() else (base / p).resolve())


def _task_identity(spec) -> str:
    """What makes two pool entries the same task: the data they read and how they split it,
    not their names or metrics (a Super-NI or TRACE location is resolved to its file/folder, so
    ``path: dir, task: task088`` equals ``path: dir/task088_....json``)."""
    from slice_trl.tasks import resolve_task_dir, resolve_task_file

    data = spec_dict(spec)
    data.pop("name", None)
    data.pop("metric", None)
    if spec.path is not None and spec.source == "superni":
        data["path"], data["task"] = str(Path(resolve_task_file(spec.path, spec.task)).resolve()), None
    elif spec.path is not None and spec.source == "trace":
        data["path"], data["task"] = str(Path(resolve_task_dir(spec.path, spec.task)).resolve()), None
    return json.dumps(data, sort_keys=True, default=str)


def _superni_dir_entries(directory: Path) -> list[dict]:
    files = sorted(p for p in directory.glob("*.json") if p.is_file())
    if not files:
        raise PoolError(f"tasks={str(directory)!r} is a directory without .json task files; put natural-instructions "
                        "task files (tasks/<name>.json) there or list the tasks explicitly.")
    return [{"name": f.stem, "source": "superni", "path": str(f)} for f in files]


def load_pool(path: str | Path, length: int | None = None, sketch_size: int | None = None,
              seed: int | None = None) -> Pool:
    """Read and validate a pool YAML file without loading any model or data set.

    Format::

        model: smollm2-135m-instruct      # model name, Hub id or local directory
        tasks: ../data/superni            # a directory of natural-instructions task files, or
        # tasks:                          # a list of task specs (slice_trl.tasks.TaskSpec fields)
        #   - {name: task088, source: superni, path: ../data/superni/task088_identify_typo_verification.json}
        calibration: {batches: 4, batch_size: 4, max_length: 256}
        sketch_size: 200000               # CountSketch size k
        seed: 42                          # sketch hashes and calibration sampling
        dtype: float32                    # optional
        target_modules: [q_proj, ...]     # optional; default: the seven Llama projections

    Relative paths are taken relative to the pool file's directory. ``length``, ``sketch_size``
    and ``seed`` (command-line values) are checked here too; the latter two override the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PoolError(f"Pool file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PoolError(f"Pool file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise PoolError(f"Pool file {str(path)!r} must be a mapping with keys {list(POOL_KEYS)}.")
    reject_unknown_keys(data, sorted(POOL_KEYS), f"Pool file {str(path)!r}", noun="key", error=PoolError)
    base = path.resolve().parent

    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise PoolError(f"Pool file {str(path)!r}: 'model' is missing; set model: <name, Hub id or local directory>, "
                        "e.g. model: smollm2-135m-instruct.")
    if model.startswith((".", "/", "~")) or (base / model).exists():
        model = _resolve(base, model)
        if not Path(model).exists():
            raise PoolError(f"model={data['model']!r}: the directory {model!r} does not exist.")

    raw_tasks = data.get("tasks")
    if raw_tasks is None:
        raise PoolError(f"Pool file {str(path)!r}: 'tasks' is missing; give a directory of natural-instructions task "
                        "files or a list of task specs ({name, source, path, ...}).")
    if isinstance(raw_tasks, str):
        directory = Path(_resolve(base, raw_tasks))
        if not directory.is_dir():
            raise PoolError(f"tasks={raw_tasks!r}: {str(directory)!r} is not a directory.")
        entries = _superni_dir_entries(directory)
    elif isinstance(raw_tasks, list):
        entries = []
        for i, entry in enumerate(raw_tasks):
            if not isinstance(entry, Mapping):
                raise PoolError(f"tasks[{i}]={entry!r} must be a mapping of task-spec fields, e.g. "
                                "{name: task088, source: superni, path: tasks/task088.json}.")
            entry = dict(entry)
            if entry.get("path") is not None:
                entry["path"] = _resolve(base, entry["path"])
            entries.append(entry)
    else:
        raise PoolError(f"tasks must be a directory (string) or a list of task specs, not {type(raw_tasks).__name__}.")

    tasks: list[dict] = []
    seen_names: dict[str, int] = {}
    seen_data: dict[str, str] = {}
    for i, entry in enumerate(entries):
        # TaskSpec validates the entry here, before any model is loaded
        parsed = make_spec(entry)
        name = parsed.display_name
        # the entry as written (absolute paths, name filled in) is what the recipe repeats
        spec = {"name": name, **{k: v for k, v in entry.items() if k != "name"}}
        if name in seen_names:
            raise PoolError(f"Duplicate task name {name!r} (tasks[{seen_names[name]}] and tasks[{i}]); every task of "
                            "the pool must appear once.")
        seen_names[name] = i
        ident = _task_identity(parsed)
        if ident in seen_data:
            where = parsed.path or parsed.dataset_id or parsed.task
            raise PoolError(f"Duplicate task: {name!r} reads the same data as {seen_data[ident]!r} ({where}); "
                            "remove one of them from the pool.")
        seen_data[ident] = name
        tasks.append(spec)

    calibration = CalibrationConfig.from_dict(data.get("calibration"))
    k = sketch_size if sketch_size is not None else data.get("sketch_size", 200_000)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < HASH_PRIME:
        raise PoolError(f"sketch_size k={k!r} must be an integer >= 1 (the reference uses 200000; larger = closer "
                        "to the exact cosine) and below 2^31 - 1.")
    s = seed if seed is not None else data.get("seed", 42)
    if isinstance(s, bool) or not isinstance(s, int):
        raise PoolError(f"seed={s!r} must be an integer.")
    dtype = data.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise PoolError(f"dtype={dtype!r} is not valid; choose one of {list(_DTYPES)}.")
    targets = data.get("target_modules")
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, str) for t in targets)):
        raise PoolError(f"target_modules={targets!r} must be a non-empty list of module names, e.g. [q_proj, v_proj].")
    pool = Pool(model=model, tasks=tasks, calibration=calibration, sketch_size=k, seed=s, dtype=dtype,
                target_modules=targets, source=str(path))
    if length is not None:
        check_length(length, len(tasks))
    return pool


def check_length(length: int, pool_size: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise PoolError(f"--length N={length!r} must be an integer >= 2 (a subset is scored by its pairwise cosines).")
    if length > pool_size:
        raise PoolError(f"--length N={length} is larger than the pool ({pool_size} tasks); choose N <= {pool_size} "
                        "or add tasks to the pool.")
