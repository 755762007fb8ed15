"""`ContinualSFTConfig`: TRL's `SFTConfig` plus the continual loop's sections.

The sections themselves (`InitConfig`, `ReplayConfig`, `EvalConfig`) live in the leaf module
`slice_trl.configs.settings` and are re-exported here; the strategy section is
`slice_trl.strategies.StrategyConfig` subclass of the named strategy, looked up in the strategy registry
(`slice_trl.utils.registry.strategies`) when the config is validated: this module imports no component.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trl import SFTConfig

from slice_trl.utils.registry import strategies
from slice_trl.configs.settings import EvalConfig, InitConfig, ReplayConfig, suggest

__all__ = ["ContinualSFTConfig", "EvalConfig", "InitConfig", "ReplayConfig", "WARMUP_DEFAULT", "report_to_names",
           "validate_report_to"]


def _as_mapping(value, field_name: str):
    """A JSON object string -> dict; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"ContinualSFTConfig.{field_name} must be a mapping or a JSON object string: {err}") from None


def _sub_config(value, cls, field_name: str):
    """dict / JSON string / instance / None -> cls instance (TrainingArguments does the same for
    its dict-valued fields, which is what lets these pass through HfArgumentParser/TrlParser)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    value = _as_mapping(value, field_name)
    if not isinstance(value, dict):
        raise ValueError(f"ContinualSFTConfig.{field_name} must be a mapping of {cls.__name__} fields, got {type(value).__name__}.")
    try:
        return cls.from_dict(value)
    except ValueError as err:
        raise ValueError(f"{field_name}: {err}") from None


def report_to_names(report_to) -> list[str]:
    """The tracker names of a ``report_to`` value (None / "none": none)."""
    if report_to is None or report_to == "none":
        return []
    return [report_to] if isinstance(report_to, str) else list(report_to)


def validate_report_to(report_to) -> None:
    """Every ``report_to`` name is one transformers has an integration for (or "all"/"none");
    raises ``ValueError`` in one line naming the valid ones."""
    from transformers.integrations import integration_utils as hf_integrations

    valid = sorted(hf_integrations.INTEGRATION_TO_CALLBACK)
    for name in report_to_names(report_to):
        if name not in valid and name not in ("all", "none"):
            raise ValueError(f"report_to={name!r} is not a tracker transformers supports.{suggest(name, valid)} "
                             f"Choose from {', '.join(valid)}, or 'all' (every installed one) or 'none'.")


WARMUP_DEFAULT = 0.01  # the paper: warm up over 1% of each stage's steps


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
        metadata={"help": "Continual strategy, as a mapping or JSON string with 'name' (a registered strategy: "
                  "slice_trl.strategies, or a package of your own through the 'slice_trl.strategies' entry point "
                  "group) and that strategy's fields, e.g. {name: olora, lambda1: 0.5}. "
                  "None = no strategy (initialiser + merge into the base only)."},
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
        default="none",
        metadata={"help": "Trackers (transformers' integrations: tensorboard, trackio, wandb, mlflow, ...) that "
                  "receive the whole sequence as one run: training logs, R, AP/FP/forgetting, GP/IP and the SLICE "
                  "gate (README, 'Tracking')."}
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
            section = _as_mapping(self.strategy, "strategy")
            name = section.get("name") if isinstance(section, dict) else getattr(section, "name", None)
            strategy_cls = strategies.get(name).obj  # an unknown name: strategy.name=... with the known ones
            self.strategy = _sub_config(section, strategy_cls.config_cls, "strategy")
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
        if self.ddp_find_unused_parameters is None:
            # transformers' default for a PeftModel is True: an extra graph traversal every step and a
            # warning on every rank. Every trainable parameter of a stage (LoRA A/B, EBLoRA's sigma; the
            # frozen ones have requires_grad False) takes part in the forward, so none is ever unused.
            self.ddp_find_unused_parameters = False
        if self.bf16 is None:  # SFTConfig would turn None into True, which fails on a CPU-only machine
            import torch  # the accelerator check only; torch is imported by trl already

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        validate_report_to(self.report_to)  # one line naming the trackers transformers supports

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
