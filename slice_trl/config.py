"""Configuration dataclasses, in TRL/PEFT style: every field has help metadata, and every
user error is raised from ``__post_init__`` with the field's name and the fix.

`InitConfig`, `ReplayConfig` and `EvalConfig` are small sub-configs; `ContinualSFTConfig`
(in ``slice_trl.trainer_config``) extends TRL's `SFTConfig` and holds one of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

INIT_METHODS = ("slice", "lora_ga", "loram", "vanilla")
PROJECTIONS = ("global", "per_module")
PREV_BATCHING = ("each_task", "pooled")
GRAD_DTYPES = ("float32", "bfloat16")
REPLAY_MODES = ("each_task", "pooled")


def _choice(cls_name: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{cls_name}.{name}={value!r} is not valid; choose one of {list(choices)}.")


class _FromDict:
    """Build from a (possibly partial) mapping, rejecting unknown keys with a suggestion."""

    @classmethod
    def from_dict(cls, data: dict | None):
        import difflib

        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{cls.__name__} has no field {key!r}.{hint} Known fields: {sorted(known)}.")
        return cls(**data)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class InitConfig(_FromDict):
    """How the fresh LoRA adapter of each task is initialised (METHOD.md, "SLICE: four stages")."""

    method: str = field(
        default="slice",
        metadata={"help": f"Initialiser: one of {list(INIT_METHODS)}. 'slice' = gradient surgery (the paper), "
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
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Use gradient checkpointing during gradient estimation."}
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

    def __post_init__(self):
        n = type(self).__name__
        _choice(n, "method", self.method, INIT_METHODS)
        _choice(n, "projection", self.projection, PROJECTIONS)
        _choice(n, "prev_batching", self.prev_batching, PREV_BATCHING)
        _choice(n, "prev_grad_dtype", self.prev_grad_dtype, GRAD_DTYPES)
        _choice(n, "prev_grad_device", self.prev_grad_device, ("same", "cpu"))
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
        return self.method in ("slice", "lora_ga")

    @property
    def uses_previous_tasks(self) -> bool:
        return self.method == "slice" and self.c > 0 and self.prev_steps > 0


@dataclass
class ReplayConfig(_FromDict):
    """The replay-sample provider: which earlier-task examples SLICE sees before a task, and the
    optional training-time replay (off by default, as in the paper)."""

    mode: str = field(
        default="each_task",
        metadata={"help": "'each_task': a separate sample per earlier task; 'pooled': one mixed sample."},
    )
    samples_per_task: int | None = field(
        default=None,
        metadata={"help": "Examples drawn per earlier task (each_task) or in total (pooled) for initialisation. "
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
        _choice(n, "mode", self.mode, REPLAY_MODES)
        if self.samples_per_task is not None and int(self.samples_per_task) < 1:
            raise ValueError(f"{n}.samples_per_task={self.samples_per_task!r} must be >= 1 (or null for the default).")
        if not 0.0 <= float(self.train_fraction) <= 10.0:
            raise ValueError(f"{n}.train_fraction={self.train_fraction!r} must be in [0, 10]; 0 turns replay off.")


@dataclass
class EvalConfig(_FromDict):
    """Evaluation of every seen task after each stage (METHOD.md, "Evaluation and metrics")."""

    max_samples: int = field(default=64, metadata={"help": "Held-out examples scored per task (first N)."})
    batch_size: int = field(default=8, metadata={"help": "Generation batch size (left padding, KV cache)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy generation budget per example."})
    max_input_tokens: int = field(default=512, metadata={"help": "Prompts longer than this are cut from the left."})
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks for GP/IP after the last stage (needs the 'eval' extra). "
                  "Empty = skip."},
    )
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "Directory of local lm-eval task YAMLs (offline use)."}
    )
    lm_eval_num_fewshot: int = field(default=5, metadata={"help": "Shots for IP (few-shot) evaluation."})
    lm_eval_limit: int | None = field(default=None, metadata={"help": "Examples per lm-eval task (None = all)."})

    def __post_init__(self):
        n = type(self).__name__
        for name in ("max_samples", "batch_size", "max_new_tokens", "max_input_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{n}.{name}={getattr(self, name)!r} must be >= 1.")
        if int(self.lm_eval_num_fewshot) < 0:
            raise ValueError(f"{n}.lm_eval_num_fewshot must be >= 0.")
