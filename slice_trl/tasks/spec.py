"""`TaskSpec`: one entry of a recipe's ``tasks:`` list, checked without loading data or a model
(local paths are checked to exist), and `MissingDataError` for data absent on this machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as dc_fields
from pathlib import Path

from slice_trl.configs.settings import reject_unknown_keys, suggest
from slice_trl.tasks.base import METRICS, LoadOptions
from slice_trl.tasks.builtin import BUILTIN_TASKS
from slice_trl.tasks.cl_benchmark import resolve_benchmark_dir
from slice_trl.tasks.generic import check_fields, local_files
from slice_trl.tasks.superni import resolve_task_file
from slice_trl.tasks.trace import resolve_task_dir

SOURCES = ("superni", "trace", "generic", "builtin", "hub_splits", "cl_benchmark")


class MissingDataError(ValueError):
    """A task's local data path does not exist (a machine-specific problem, not a recipe typo).
    Also raised when an existing directory lacks the named task's file or folder."""


@dataclass
class TaskSpec:
    """One task of a recipe's sequence. Validated on construction (no data or model is loaded;
    local paths are checked to exist)."""

    source: str | None = field(
        default=None,
        metadata={"help": f"Where the task comes from: one of {list(SOURCES)}."},
    )
    name: str | None = field(
        default=None,
        metadata={"help": "Name used in results (R matrix, logs). Default: the task id (Super-NI: the full "
                  "task name), else the file/directory/dataset name."},
    )
    path: str | None = field(
        default=None,
        metadata={"help": "Local data. superni: a task .json file, or a directory of them (with task=). "
                  "trace: a task directory holding train.json (or a TRACE root with task=). cl_benchmark: an "
                  "O-LoRA/SAPT task folder (train.json, test.json, optional labels.json). generic: a "
                  ".json/.jsonl/.csv/.parquet file, a directory or a glob. Relative paths are resolved "
                  "against the recipe's data_dir (TaskSpec.from_dict(..., base_dir=data_dir)), else the working "
                  "directory."},
    )
    dataset_id: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, instead of path (superni, trace, generic); required for hub_splits."},
    )
    task: str | None = field(
        default=None,
        metadata={"help": "The source's task id. superni: task088_identify_typo_verification or task088. trace: "
                  "the task folder (FOMC) under a TRACE root, or the Hub config. generic: the Hub config. builtin: "
                  f"one of {list(BUILTIN_TASKS)} (default: name). hub_splits: the config (task) name in the "
                  "pushed repo."},
    )
    metric: str | None = field(
        default=None,
        metadata={"help": f"Scoring of the held-out split: one of {list(METRICS)}. Default: superni per docs/method.md "
                  "(exact_match for task088/task1510/task363, else rougeL); trace and generic rougeL; builtin "
                  "exact_match."},
    )
    fields: dict | None = field(
        default=None,
        metadata={"help": "generic only: role -> column, e.g. {prompt: question, completion: answer} or "
                  "{messages: conversations}; optional system: <column>. Default: messages/conversations, or "
                  "prompt + completion columns."},
    )
    files: list | None = field(
        default=None,
        metadata={"help": "trace only: files of the task directory pooled before the split (default "
                  "[train.json]; eval.json/test.json are TRACE's test set)."},
    )
    split: str | None = field(
        default=None,
        metadata={"help": "Hub split to read (superni: all splits pooled when unset; trace/generic: train)."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) to read."})
    max_train: int | None = field(
        default=None,
        metadata={"help": "Cap on training examples (taken from the shuffled train split); builtin: examples "
                  "generated (default 256). None = all."},
    )
    max_eval: int | None = field(
        default=200,
        metadata={"help": "Held-out examples: min(max_eval, n-1) (the paper: 200); builtin: examples generated; "
                  "cl_benchmark: a cap on the test split (None = all of it, the default of sequence:)."},
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the train/eval split (the paper: 42); builtin: the generator seed."},
    )
    origin: str | None = field(
        default=None,
        metadata={"help": "Where the task's data comes from (a URL or a repository path), named when it is missing "
                  "on this machine (set by sequence:)."},
    )
    min_keep_tokens: int = field(
        default=32,
        metadata={"help": "Length fitting: a prompt piece (input, definition) is first shortened no further than "
                  "this many tokens before the next piece is shortened."},
    )

    def __post_init__(self):
        self.validate()

    # -- construction from a recipe mapping ----------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path | None = None) -> "TaskSpec":
        """Build from a recipe mapping; unknown keys raise with a close-match suggestion.
        A relative ``path`` is resolved against ``base_dir`` (the recipe's data_dir) if given."""
        if not isinstance(data, dict):
            raise ValueError("A task entry must be a mapping such as {source: superni, path: ..., task: ...}; "
                             f"got {data!r}.")
        reject_unknown_keys(data, [f.name for f in dc_fields(cls)], cls.__name__)
        data = dict(data)
        if base_dir is not None and data.get("path") and not Path(str(data["path"])).is_absolute():
            data["path"] = str(Path(base_dir) / str(data["path"]))
        return cls(**data)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dc_fields(self)}

    # -- validation -----------------------------------------------------------------------------
    def _err(self, msg: str) -> ValueError:
        label = self.name or self.task or self.path or self.dataset_id or "?"
        return ValueError(f"TaskSpec({label}): {msg}")

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix for every problem found without loading."""
        if not self.source:
            raise self._err(f"source is required; choose one of {list(SOURCES)}.")
        if self.source not in SOURCES:
            raise self._err(f"source={self.source!r} is unknown.{suggest(self.source, SOURCES)} "
                            f"Choose one of {list(SOURCES)}.")
        if self.metric is not None and self.metric not in METRICS:
            raise self._err(f"metric={self.metric!r} is unknown.{suggest(self.metric, METRICS)} Choose one of "
                            f"{list(METRICS)} (or leave it unset for the source's default).")
        whole_test = self.max_eval is None and self.source == "cl_benchmark"  # the benchmark's test split, whole
        for name in ("seed", "min_keep_tokens") + (() if whole_test else ("max_eval",)):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise self._err(f"{name}={getattr(self, name)!r} must be an integer.")
        if not whole_test and self.max_eval < 1:
            raise self._err(f"max_eval={self.max_eval!r} must be >= 1 (the paper holds out 200).")
        if self.max_train is not None and (not isinstance(self.max_train, int) or self.max_train < 1):
            raise self._err(f"max_train={self.max_train!r} must be a positive integer, or unset for all examples.")
        if self.min_keep_tokens < 0:
            raise self._err(f"min_keep_tokens={self.min_keep_tokens!r} must be >= 0.")
        if self.fields is not None and self.source not in ("generic",):
            raise self._err(f"fields is only used by source='generic' (source is {self.source!r}); remove it.")
        if self.files is not None and self.source != "trace":
            raise self._err(f"files is only used by source='trace' (source is {self.source!r}); remove it.")
        if self.path is not None:
            self.path = str(self.path)
        getattr(self, f"_validate_{self.source}")()

    def _one_location(self, what: str) -> None:
        if (self.path is None) == (self.dataset_id is None):
            both = "both are set" if self.path is not None else "neither is set"
            raise self._err(f"source={self.source!r} needs exactly one of path= (local {what}) or dataset_id= "
                            f"(Hub dataset); {both}.")

    def _check_path_exists(self) -> None:
        p = Path(self.path)
        if not p.exists() and not any(ch in self.path for ch in "*?["):
            get = f" Get the data from {self.origin}." if self.origin else ""
            raise MissingDataError(self._err(
                f"path={self.path!r} does not exist; fix the path (a relative path is resolved against the "
                f"recipe's data_dir when set, else the working directory {str(Path.cwd())!r}).{get}"
            ).args[0])

    def _validate_superni(self) -> None:
        self._one_location("natural-instructions task file or directory")
        if self.dataset_id is not None:
            if not self.task:
                raise self._err("task= is required with dataset_id= (e.g. task088_identify_typo_verification).")
            return
        self._check_path_exists()
        if Path(self.path).is_dir() and not self.task:
            raise self._err(f"path={self.path!r} is a directory: set task= (e.g. task088 or "
                            "task088_identify_typo_verification).")
        try:
            file = resolve_task_file(self.path, self.task)
        except FileNotFoundError as exc:  # the directory exists but lacks this task's file
            raise MissingDataError(self._err(f"task={self.task!r}: {exc}").args[0]) from None
        except ValueError as exc:
            raise self._err(f"task={self.task!r}: {exc}") from None
        self.task = file.stem  # the full name, also for a short id such as task088

    def _validate_trace(self) -> None:
        self._one_location("TRACE task directory")
        if self.dataset_id is not None:
            return
        self._check_path_exists()
        try:
            where = resolve_task_dir(self.path, self.task)
        except FileNotFoundError as exc:
            raise MissingDataError(self._err(f"path/task: {exc}").args[0]) from None
        if self.files is not None:
            if isinstance(self.files, str):
                self.files = [self.files]
            if not self.files or where.is_file():
                raise self._err("files= must list file names inside the TRACE task directory, e.g. [train.json].")
            missing = [f for f in self.files if not (where / f).is_file()]
            if missing:
                raise self._err(f"files {missing} are not in {str(where)!r} (it has "
                                f"{sorted(p.name for p in where.glob('*.json'))}).")

    def _validate_generic(self) -> None:
        self._one_location("data files")
        try:
            check_fields(self.fields)
        except ValueError as exc:
            raise self._err(str(exc)) from None
        if self.path is not None:
            self._check_path_exists()
            try:
                local_files(self.path)
            except FileNotFoundError as exc:
                raise MissingDataError(self._err(f"path: {exc}").args[0]) from None
            except ValueError as exc:
                raise self._err(f"path: {exc}") from None

    def _validate_builtin(self) -> None:
        if self.path is not None or self.dataset_id is not None:
            raise self._err("source='builtin' is generated in code: remove path= and dataset_id=.")
        if self.task is None and self.name in BUILTIN_TASKS:
            self.task = self.name  # {name: first, source: builtin} is enough
        if self.task not in BUILTIN_TASKS:
            raise self._err(f"task={self.task!r} is not a built-in task.{suggest(self.task, BUILTIN_TASKS)} "
                            f"Choose one of {list(BUILTIN_TASKS)}.")

    def _validate_cl_benchmark(self) -> None:
        if self.path is None or self.dataset_id is not None:
            raise self._err("source='cl_benchmark' reads a local task folder: set path= (the folder, or the benchmark's "
                            "root with task=) and no dataset_id=.")
        self._check_path_exists()
        try:
            resolve_benchmark_dir(self.path, self.task, self.origin)
        except FileNotFoundError as exc:
            raise MissingDataError(self._err(str(exc)).args[0]) from None

    def _validate_hub_splits(self) -> None:
        if not self.dataset_id:
            raise self._err("source='hub_splits' needs dataset_id= (the repo of prepared splits).")
        if self.path is not None:
            raise self._err("source='hub_splits' reads from the Hub: remove path= (use source='generic' for local "
                            "files).")
        if not self.task:
            raise self._err("source='hub_splits' needs task= (the config named after the task in the repo).")

    def load_options(self, tokenizer=None, max_length: int | None = None) -> LoadOptions:
        """What the loaders take from this spec (`LoadOptions`), with the length-fitting budget."""
        return LoadOptions(name=self.display_name, metric=self.metric, split=self.split, revision=self.revision,
                           seed=self.seed, max_eval=self.max_eval, max_train=self.max_train, tokenizer=tokenizer,
                           max_length=max_length, min_keep_tokens=self.min_keep_tokens)

    @property
    def display_name(self) -> str:
        """The task's name before loading (equal to the loaded `Task.name`)."""
        if self.name:
            return self.name
        if self.task:
            return self.task
        if self.path:
            p = Path(self.path)
            return p.stem if p.is_file() else p.name
        return str(self.dataset_id).rsplit("/", 1)[-1]
