"""The settings sections of a continual run, and the one rule for unknown keys and close matches.

`InitConfig`, `ReplayConfig` and `EvalConfig` are the ``init:``, ``replay:`` and ``evaluation:``
sections of a recipe (fields of `slice_trl.configs.config.ContinualSFTConfig`). Every field has help
metadata, and every user error is raised from ``__post_init__`` with the field's name and the fix.

This module imports only the utils layer (the registries, asked at validation time), so every
layer above may use `suggest`, `check_choice`, `reject_unknown_keys`, `duplicate_names` and `FromDict`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from slice_trl.utils import registry
from slice_trl.utils.registry import suggest  # noqa: F401  (re-exported: every layer's close-match hint)


def check_choice(where: str, name: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``where.name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{where}.{name}={value!r} is not valid.{suggest(value, choices)} "
                         f"Choose one of {list(choices)}.")


def reject_unknown_keys(data, known, where: str, *, noun: str = "field", error: type[Exception] = ValueError) -> None:
    """THE unknown-key rule: the first key of ``data`` not in ``known`` raises ``error`` with the
    closest known key and the full list (``known`` in the order given)."""
    known = list(known)
    for key in data:
        if key not in known:
            raise error(f"{where} has no {noun} {key!r}.{suggest(key, known)} Known {noun}s: {known}.")


def duplicate_names(names: Iterable[str]) -> list[str]:
    """THE duplicate check of task names (or any names that must be unique): the names given
    more than once, sorted; callers raise their own error naming where the list came from."""
    names = list(names)
    return sorted({n for n in names if names.count(n) > 1})


class FromDict:
    """Build a dataclass from a (possibly partial) mapping, rejecting unknown keys."""

    @classmethod
    def from_dict(cls, data: dict | None):
        data = dict(data or {})
        reject_unknown_keys(data, sorted(f.name for f in fields(cls)), cls.__name__)
        return cls(**data)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PROJECTIONS = ("global", "per_module")
PREV_BATCHING = ("each_task", "pooled")
GRAD_DTYPES = ("float32", "bfloat16")


@dataclass
class InitConfig(FromDict):
    """How the fresh LoRA adapter of each task is initialised (docs/method.md, "SLICE: four stages")."""

    method: str = field(
        default="slice",
        metadata={"help": "Initialiser: a registered name (slice_trl.initializers; a package of your own adds one "
                  "through the 'slice_trl.initializers' entry point group). 'slice' = gradient surgery (the paper), "
                  "'lora_ga' = variance-matched LoRA-GA, 'loram' = DST-I bases, 'vanilla' = PEFT's default init."},
    )
    c: float = field(
        default=1.0,
        metadata={"help": "SLICE projection strength c in [0, 1]: 0 = LoRA-GA, 1 = PCGrad."},
    )
    projection: str = field(
        default="global",
        metadata={"help": "'global': one gamma from whole-model inner products (paper default); "
                  "'per_module': the same formula per target module."},
    )
    cur_steps: int = field(
        default=8, metadata={"help": "S_cur: mini-batches of current-task data for G_cur."}
    )
    prev_steps: int = field(
        default=8,
        metadata={"help": "S_prev: mini-batches of previous-task data; per earlier task with "
                  "prev_batching='each_task', in total with 'pooled'."},
    )
    prev_batching: str = field(
        default="each_task",
        metadata={"help": "'each_task': one loader per earlier task, every batch weighs equally in the mean; "
                  "'pooled': one loader over a mix of all earlier tasks."},
    )
    batch_size: int = field(
        default=16, metadata={"help": "Examples per gradient-estimation mini-batch (the paper: the training batch, 16)."}
    )
    micro_batch_size: int = field(
        default=4,
        metadata={"help": "Examples per forward/backward inside a mini-batch; bounds activation memory. "
                  "The mean gradient does not depend on it."},
    )
    activation_checkpointing: bool = field(
        default=False,
        metadata={"help": "Activation checkpointing during gradient estimation (transformers 5's name, as the "
                  "training's own activation_checkpointing; the old key gradient_checkpointing is read as this)."},
    )
    svd_oversample: int = field(
        default=4, metadata={"help": "Randomised SVD rank q = min(svd_oversample * r, min(d_out, d_in))."}
    )
    svd_niter: int = field(default=4, metadata={"help": "Power iterations of the randomised SVD."})
    rescale: bool = field(
        default=True,
        metadata={"help": "Variance-matched rescaling (LoRAM): Var(B0 A0) = ln r / ln m * Var(W). "
                  "Ignored by 'vanilla'."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the randomised SVD and the vanilla init."})
    prev_grad_device: str = field(
        default="same",
        metadata={"help": "Where G_prev is kept while G_cur is estimated: 'same' (the model's device) or 'cpu' "
                  "(saves accelerator memory, costs transfers)."},
    )
    prev_grad_dtype: str = field(
        default="float32",
        metadata={"help": "Storage dtype of G_prev: 'float32' or 'bfloat16' (halves its memory; products are "
                  "still taken in float32)."},
    )

    RENAMED = {"gradient_checkpointing": "activation_checkpointing"}  # old key -> field (transformers 5's rename)

    @classmethod
    def from_dict(cls, data: dict | None):
        """A recipe's ``init:`` section; an old key of `RENAMED` is read as its new name."""
        data = dict(data or {})
        for old, new in cls.RENAMED.items():
            if old in data:
                if new in data and data[new] != data[old]:
                    raise ValueError(f"{cls.__name__}.{old}={data[old]!r} and {new}={data[new]!r} are both set; "
                                     f"{old} is the old name of {new}: set only {new}.")
                data[new] = data.pop(old)
        return super().from_dict(data)

    def __post_init__(self):
        n = type(self).__name__
        registry.initializers.get(self.method)  # unknown name: the error names init.method and the known ones
        check_choice(n, "projection", self.projection, PROJECTIONS)
        check_choice(n, "prev_batching", self.prev_batching, PREV_BATCHING)
        check_choice(n, "prev_grad_dtype", self.prev_grad_dtype, GRAD_DTYPES)
        check_choice(n, "prev_grad_device", self.prev_grad_device, ("same", "cpu"))
        if not isinstance(self.c, (int, float)) or not 0.0 <= float(self.c) <= 1.0:
            raise ValueError(f"{n}.c={self.c!r} must be a number in [0, 1] (0 = LoRA-GA, 1 = PCGrad).")
        self.c = float(self.c)
        for name in ("cur_steps", "batch_size", "micro_batch_size", "svd_oversample"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{n}.{name}={getattr(self, name)!r} must be >= 1.")
        for name in ("prev_steps", "svd_niter"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{n}.{name}={getattr(self, name)!r} must be >= 0.")

    @property
    def uses_gradients(self) -> bool:
        """Whether the initialiser estimates gradients from data (its registered trait)."""
        return registry.initializers.get(self.method).uses_gradients

    @property
    def needs_2r(self) -> bool:
        """Whether the initialiser takes 2r singular directions (rank check: 2r <= min(d_out, d_in))."""
        return registry.initializers.get(self.method).needs_2r


@dataclass
class ReplayConfig(FromDict):
    """The replay-sample provider: which earlier-task examples SLICE sees before a task, and the
    optional training-time replay (off by default, as in the paper). Whether the sample is drawn
    per earlier task or pooled is `InitConfig.prev_batching`."""

    samples_per_task: int | None = field(
        default=None,
        metadata={"help": "Examples drawn per earlier task (prev_batching='each_task') or in total ('pooled') for "
                  "initialisation. "
                  "Default: exactly what InitConfig needs (prev_steps * batch_size)."},
    )
    seed: int = field(default=42, metadata={"help": "Base seed; stage t draws with a seed derived from (seed, t)."})
    train_fraction: float = field(
        default=0.0,
        metadata={"help": "Training-time replay: add this fraction (of the current task's train size) of "
                  "earlier-task examples to the stage's train set. 0 = off (the paper's setting)."},
    )

    def __post_init__(self):
        n = type(self).__name__
        if self.samples_per_task is not None and int(self.samples_per_task) < 1:
            raise ValueError(f"{n}.samples_per_task={self.samples_per_task!r} must be >= 1 (or null for the default).")
        if not 0.0 <= float(self.train_fraction) <= 10.0:
            raise ValueError(f"{n}.train_fraction={self.train_fraction!r} must be in [0, 10]; 0 turns replay off.")


@dataclass
class EvalConfig(FromDict):
    """Evaluation of every seen task after each stage (docs/method.md, "Evaluation and metrics")."""

    max_samples: int = field(default=64, metadata={"help": "Held-out examples scored per task (first N)."})
    batch_size: int = field(default=8, metadata={"help": "Generation batch size (left padding, KV cache)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy generation budget per example."})
    max_input_tokens: int = field(default=512, metadata={"help": "Prompts longer than this are cut from the left."})
    score_base: bool = field(
        default=False,
        metadata={"help": "Score the base model on every task before stage 1 (the base row R_0 of R), stored in "
                  "the run folder's base/ and reused on resume."},
    )
    every: int = field(
        default=1,
        metadata={"help": "Score every seen task after every k-th stage and after the last one; the other stages "
                  "score only the task just trained (R's diagonal), the rest of their row is marked unscored. "
                  "1 = every stage: T(T+1)/2 task evaluations for T tasks (120 for 15)."},
    )
    score_upcoming: bool = field(
        default=False,
        metadata={"help": "After each stage also score the next task before it is trained (R[i-1][i], one more "
                  "task evaluation per stage, T-1 in all): needed for FWT, with score_base for R_0."},
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks for GP (0-shot) and IP (few-shot), scored for the base model "
                  "(once, cached in the run folder's base/) and after the last stage (needs the 'eval' extra). "
                  "The paper: [hellaswag, commonsense_qa, bbh_fewshot_object_counting, slice_alpaca]. Empty = skip."},
    )
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "Directory of your own lm-eval task YAMLs (they override tasks of the same name)."}
    )
    lm_eval_local_data: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Run a benchmark from a local JSON-lines file instead of the Hub, e.g. "
                  "{hellaswag: /data/hellaswag_val.jsonl}; benchmarks with a shipped format template: hellaswag, "
                  "commonsense_qa, bbh_fewshot_object_counting, slice_alpaca (README, 'General ability')."},
    )
    general_every_stage: bool = field(
        default=False,
        metadata={"help": "Also score GP/IP after every stage (each stage record carries them and the change from "
                  "the base model), not only after the last one."},
    )
    lm_eval_num_fewshot: int = field(default=5, metadata={"help": "Shots for IP (few-shot) evaluation."})
    lm_eval_limit: int | None = field(default=None, metadata={"help": "Examples per lm-eval task (None = all)."})
    lm_eval_fewshot_overrides: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "Per-task shots for IP, overriding lm_eval_num_fewshot (the paper: 3 for BBH), "
                  "e.g. {bbh_fewshot_object_counting: 3}."},
    )
    lm_eval_metrics: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Per-task primary metric for GP/IP (e.g. {hellaswag: acc_norm}); default: the first of "
                  "acc_norm, acc, exact_match, ... that the task reports."},
    )

    def __post_init__(self):
        n = type(self).__name__
        for name in ("max_samples", "batch_size", "max_new_tokens", "max_input_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{n}.{name}={getattr(self, name)!r} must be >= 1.")
        for name in ("score_base", "score_upcoming"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{n}.{name}={getattr(self, name)!r} must be true or false.")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"{n}.every={self.every!r} must be an integer >= 1 (score all seen tasks every k "
                             "stages; 1 = every stage).")
        if int(self.lm_eval_num_fewshot) < 0:
            raise ValueError(f"{n}.lm_eval_num_fewshot must be >= 0.")
        if self.lm_eval_limit is not None and self.lm_eval_limit < 1:
            raise ValueError(f"{n}.lm_eval_limit={self.lm_eval_limit!r} must be >= 1 examples per lm-eval task, or "
                             "null for all of them.")
        if isinstance(self.lm_eval_tasks, str):  # a single task name from the command line
            self.lm_eval_tasks = [self.lm_eval_tasks]
        for name in ("lm_eval_fewshot_overrides", "lm_eval_metrics", "lm_eval_local_data"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{n}.{name} must be a mapping of lm-eval task name -> value, "
                                 f"got {getattr(self, name)!r}.")
        for task, shots in self.lm_eval_fewshot_overrides.items():
            if not isinstance(shots, int) or shots < 0:
                raise ValueError(f"{n}.lm_eval_fewshot_overrides[{task!r}]={shots!r} must be an integer >= 0.")
        for name in ("lm_eval_fewshot_overrides", "lm_eval_local_data"):
            unknown = sorted(set(getattr(self, name)) - set(self.lm_eval_tasks))
            if unknown:
                raise ValueError(f"{n}.{name} names tasks not in lm_eval_tasks: {unknown}. Add them to "
                                 f"{n}.lm_eval_tasks or remove them from {n}.{name}.")
        for task, path in self.lm_eval_local_data.items():
            if not isinstance(path, str) or not path:
                raise ValueError(f"{n}.lm_eval_local_data[{task!r}]={path!r} must be the path of a JSON-lines file.")
