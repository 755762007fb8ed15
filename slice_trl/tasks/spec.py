"""`TaskSpec`: one entry of a recipe's ``tasks:`` list, checked without loading data or a model
(local paths are checked to exist), and `MissingDataError` for data absent on this machine.

The sources are registered in `slice_trl.utils.registry.task_sources`, each by its own module with
``@task_sources.register(name, validate=..., fields=(...))`` on its loader ``(spec, options) -> Task``:
``validate(spec)`` raises through `TaskSpec.error` / `TaskSpec.one_location` /
`TaskSpec.check_path_exists` and may normalise the spec; ``fields`` names the source-only TaskSpec
fields it reads (``files``, ``fields``), which every other source refuses; ``whole_eval`` True lets
``max_eval: null`` mean the source's whole held-out split."""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as dc_fields
from pathlib import Path

from slice_trl.utils.registry import metrics, task_sources
from slice_trl.configs.settings import reject_unknown_keys
from slice_trl.tasks.base import LoadOptions

BUILTIN_SOURCES = "superni, trace, generic, builtin, hub_splits, cl_benchmark"  # for help texts only


class MissingDataError(ValueError):
    """A task's local data path does not exist (a machine-specific problem, not a recipe typo).
    Also raised when an existing directory lacks the named task's file or folder."""


@dataclass
class TaskSpec:
    """One task of a recipe's sequence. Validated on construction (no data or model is loaded;
    local paths are checked to exist)."""

    source: str | None = field(
        default=None,
        metadata={"help": f"Where the task comes from: a registered source (built in: {BUILTIN_SOURCES}; a package "
                  "of your own adds one through the 'slice_trl.task_sources' entry point group)."},
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
                  "one of tasks.BUILTIN_TASKS (default: name). hub_splits: the config (task) name in the "
                  "pushed repo."},
    )
    metric: str | None = field(
        default=None,
        metadata={"help": "Scoring of the held-out split: a registered metric (built in: exact_match, rougeL, "
                  "sni_exact_match, sni_rougeL; a package of your own adds one through the 'slice_trl.metrics' "
                  "entry point group). Default: superni per docs/method.md "
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
    def error(self, msg: str) -> ValueError:
        """``msg`` as this task's ValueError, ``TaskSpec(<name>): msg`` (a source's validator raises it)."""
        label = self.name or self.task or self.path or self.dataset_id or "?"
        return ValueError(f"TaskSpec({label}): {msg}")

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix for every problem found without loading:
        the fields every source shares here, then the source's own validator (its registry entry)."""
        if not self.source:
            raise self.error(f"source is required; choose one of {task_sources.names()}.")
        try:
            source = task_sources.get(self.source)
            if self.metric is not None:
                metrics.get(self.metric)
        except ValueError as err:
            raise self.error(str(err)) from None
        whole_test = self.max_eval is None and source.whole_eval  # e.g. cl_benchmark's test split, whole
        for name in ("seed", "min_keep_tokens") + (() if whole_test else ("max_eval",)):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise self.error(f"{name}={getattr(self, name)!r} must be an integer.")
        if not whole_test and self.max_eval < 1:
            raise self.error(f"max_eval={self.max_eval!r} must be >= 1 (the paper holds out 200).")
        if self.max_train is not None and (not isinstance(self.max_train, int) or self.max_train < 1):
            raise self.error(f"max_train={self.max_train!r} must be a positive integer, or unset for all examples.")
        if self.min_keep_tokens < 0:
            raise self.error(f"min_keep_tokens={self.min_keep_tokens!r} must be >= 0.")
        for entry in task_sources.entries():  # a source-only field (files, fields) set for another source
            for name in entry.fields:
                if getattr(self, name) is not None and name not in source.fields:
                    raise self.error(f"{name} is only used by source={entry.name!r} (source is {self.source!r}); "
                                     "remove it.")
        if self.path is not None:
            self.path = str(self.path)
        if source.validate is not None:
            source.validate(self)

    def one_location(self, what: str) -> None:
        """Exactly one of path= (local ``what``) and dataset_id= is set."""
        if (self.path is None) == (self.dataset_id is None):
            both = "both are set" if self.path is not None else "neither is set"
            raise self.error(f"source={self.source!r} needs exactly one of path= (local {what}) or dataset_id= "
                             f"(Hub dataset); {both}.")

    def check_path_exists(self) -> None:
        """path= exists (or is a glob); a `MissingDataError` saying where it was looked for otherwise."""
        p = Path(self.path)
        if not p.exists() and not any(ch in self.path for ch in "*?["):
            get = f" Get the data from {self.origin}." if self.origin else ""
            raise MissingDataError(self.error(
                f"path={self.path!r} does not exist; fix the path (a relative path is resolved against the "
                f"recipe's data_dir when set, else the working directory {str(Path.cwd())!r}).{get}"
            ).args[0])

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
