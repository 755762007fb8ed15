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


def _choice(cls_name: str, name: str, value, choices) -> None:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{cls_name}.{name}={value!r} is not valid.{hint} Choose one of {list(choices)}.")


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
    """How the fresh LoRA adapter of each task is initialised (docs/method.md, "SLICE: four stages")."""

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
class EvalConfig(_FromDict):
    """Evaluation of every seen task after each stage (docs/method.md, "Evaluation and metrics")."""

    max_samples: int = field(default=64, metadata={"help": "Held-out examples scored per task (first N)."})
    batch_size: int = field(default=8, metadata={"help": "Generation batch size (left padding, KV cache)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy generation budget per example."})
    max_input_tokens: int = field(default=512, metadata={"help": "Prompts longer than this are cut from the left."})
    score_base: bool = field(
        default=False,
        metadata={"help": "Score the base model on every task before stage 1 (the base row R_0 of R), stored in "
                  "output_dir/base/record.json and reused on resume."},
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks for GP (0-shot) and IP (few-shot), scored for the base model "
                  "(once, cached in output_dir/base/general.json) and after the last stage (needs the 'eval' extra). "
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
        if not isinstance(self.score_base, bool):
            raise ValueError(f"{n}.score_base={self.score_base!r} must be true or false.")
        if int(self.lm_eval_num_fewshot) < 0:
            raise ValueError(f"{n}.lm_eval_num_fewshot must be >= 0.")
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


def _sub_config(value, cls, field_name: str):
    """dict / JSON string / instance / None -> cls instance (TrainingArguments does the same for
    its dict-valued fields, which is what lets these pass through HfArgumentParser/TrlParser)."""
    import json

    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"ContinualSFTConfig.{field_name} must be a mapping or a JSON object string: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"ContinualSFTConfig.{field_name} must be a mapping of {cls.__name__} fields, got {type(value).__name__}.")
    try:
        return cls.from_dict(value)
    except ValueError as err:
        raise ValueError(f"{field_name}: {err}") from None


WARMUP_DEFAULT = 0.01  # the paper: warm up over 1% of each stage's steps


def _continual_sft_config():
    from trl import SFTConfig

    @dataclass
    class ContinualSFTConfig(SFTConfig):
        """`trl.SFTConfig` plus the continual loop: initialiser, replay, evaluation and stage
        layout. Every `SFTConfig` field applies to each task's stage (epochs, lr, schedule,
        batch, accumulation, completion-only loss, report_to...). The optimizer, scheduler and
        trainer state are fresh for every task.

        ``init``, ``replay`` and ``evaluation`` take a mapping (YAML section or JSON string) or
        the dataclass itself; after construction they are `InitConfig`, `ReplayConfig` and
        `EvalConfig` instances.
        """

        init: dict | str | None = field(
            default=None,
            metadata={"help": "Initialiser settings (InitConfig fields: method, c, projection, cur_steps, prev_steps, "
                      "prev_batching, batch_size, micro_batch_size, svd_oversample, svd_niter, rescale, seed, "
                      "prev_grad_device, prev_grad_dtype), as a mapping or JSON string."},
        )
        replay: dict | str | None = field(
            default=None,
            metadata={"help": "Replay-sample provider settings (ReplayConfig fields: samples_per_task, seed, "
                      "train_fraction), as a mapping or JSON string."},
        )
        evaluation: dict | str | None = field(
            default=None,
            metadata={"help": "Evaluation settings (EvalConfig fields: max_samples, batch_size, max_new_tokens, "
                      "max_input_tokens, score_base, lm_eval_*, general_every_stage), as a mapping or JSON string."},
        )
        strategy: dict | str | None = field(
            default=None,
            metadata={"help": "Continual strategy (slice_trl.strategies), as a mapping or JSON string with 'name' "
                      "(eblora, inflora, keeplora, olora, slao) and that strategy's fields, e.g. {name: olora, lambda1: 0.5}. "
                      "None = no strategy (initialiser + merge into the base only)."},
        )
        merge_after_task: bool = field(
            default=True,
            metadata={"help": "Merge each stage's adapter into the base after the task (the paper's protocol). "
                      "False keeps the stage adapters unmerged (stacked, frozen) and trains a new one on top."},
        )
        resume: bool = field(
            default=True,
            metadata={"help": "Rerunning with the same output_dir skips finished stages and restarts an unfinished one."},
        )
        save_strategy: str = field(
            default="no",
            metadata={"help": "Mid-stage checkpointing of the underlying Trainer ('no' by default: every finished "
                      "stage is saved by the continual loop itself)."},
        )
        report_to: None | str | list[str] = field(
            default="none", metadata={"help": "Integrations to report each stage's training logs to."}
        )
        learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of each stage (paper: 1e-4)."})
        lr_scheduler_type: str = field(default="linear", metadata={"help": "Schedule of each stage (paper: linear)."})
        warmup_steps: float = field(
            default=WARMUP_DEFAULT,
            metadata={"help": "Warmup of each stage: optimizer steps (an integer >= 1) or a ratio of the stage's "
                      "steps in [0, 1) (transformers 5; paper: 0.01)."},
        )
        warmup_ratio: float | None = field(
            default=None,
            metadata={"help": "Older TRL/transformers spelling of a warmup ratio in [0, 1); copied into "
                      "warmup_steps (transformers 5 has no warmup_ratio and would ignore it)."},
        )
        max_length: int | None = field(default=256, metadata={"help": "Token budget per example (paper: 256)."})
        logging_steps: float = field(default=5, metadata={"help": "Log every N optimizer steps."})
        bf16: bool | None = field(
            default=None,
            metadata={"help": "bf16 mixed precision. Default: on when a bf16-capable GPU is present, off on CPU."},
        )
        gradient_checkpointing: bool | None = field(
            default=None, metadata={"help": "Deprecated alias of activation_checkpointing (transformers 5)."}
        )
        activation_checkpointing: bool | None = field(
            default=False, metadata={"help": "Activation checkpointing during each stage's training."}
        )

        def __post_init__(self):
            if self.strategy is not None:
                from .strategies import REGISTRY, StrategyConfig

                self.strategy = _sub_config(self.strategy, StrategyConfig, "strategy")
                strategy_cls = REGISTRY[self.strategy.name]
                given = self.init.get("method") if isinstance(self.init, dict) else (
                    self.init.method if isinstance(self.init, InitConfig) else None)
                if strategy_cls.defines_init and given is None:  # its own init: default to vanilla
                    self.init = {**(self.init if isinstance(self.init, dict) else {}), "method": "vanilla"}
            self.init = _sub_config(self.init, InitConfig, "init")
            if self.strategy is not None and strategy_cls.defines_init and self.init.method != "vanilla":
                raise ValueError(
                    f"strategy {self.strategy.name!r} defines its own adapter initialisation, which conflicts with "
                    f"init.method={self.init.method!r}. Set init.method to 'vanilla' (or leave it unset), or use a "
                    f"strategy that composes with any initialiser (olora).")
            self.replay = _sub_config(self.replay, ReplayConfig, "replay")
            self.evaluation = _sub_config(self.evaluation, EvalConfig, "evaluation")
            self._apply_warmup_ratio()
            if self.bf16 is None:  # SFTConfig would turn None into True, which fails on a CPU-only machine
                import torch

                self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
            super().__post_init__()

        def _apply_warmup_ratio(self) -> None:
            if self.warmup_ratio is None:
                return
            r = self.warmup_ratio
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise ValueError(f"warmup_ratio={r!r} must be a ratio in [0, 1); for a number of steps use "
                                 "warmup_steps.")
            if self.warmup_steps != WARMUP_DEFAULT and self.warmup_steps != r:
                raise ValueError(f"warmup_ratio={r} and warmup_steps={self.warmup_steps} are both set; set only "
                                 "warmup_steps (steps >= 1, or a ratio in [0, 1)).")
            self.warmup_steps = float(r)

        def to_dict(self):
            d = super().to_dict()
            for name in ("init", "replay", "evaluation"):
                d[name] = getattr(self, name).to_dict()
            if self.strategy is not None:
                d["strategy"] = self.strategy.to_dict()
            return d

    return ContinualSFTConfig


ContinualSFTConfig = _continual_sft_config()
