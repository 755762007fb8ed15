"""The continual-strategy interface of `ContinualSFTTrainer`, its `register` decorator and the config section.

A strategy acts at these points of every stage (docs/strategies.md). It sees the loop through a
`StageContext` (the tasks, a task's prepared train split, the collator, attaching a fresh adapter,
the current model), not the whole trainer:

- ``before_task(ctx, t, peft_model)``: after the initialiser has written the fresh adapter;
  may write or freeze adapter parts and may use the gradient probe (`task_gradient`).
- ``before_training(ctx, t)``: after the initial adapter is saved, right before training
  (the optimiser is created after it): may add strategy-only trainable parameters.
- ``pre_step(ctx, model)`` / ``post_step(ctx, model)``: exactly once per OPTIMISER step
  (whatever the gradient accumulation), right before / after ``optimizer.step()``: hooked through
  `TrainerCallback.on_pre_optimizer_step` / ``on_optimizer_step`` of transformers' Trainer. The
  gradients seen by ``pre_step`` are already clipped (``max_grad_norm``).
- ``before_save(ctx, t)``: after training, before the trained adapter is saved: folds any
  strategy-only parameter into lora_A/lora_B so that every saved adapter is plain PEFT.
- ``after_task(ctx, t)``: after the trained adapter is saved, before any merge. ``merge``
  (class attribute) says what the trainer does next: ``"base"`` merge into the base weights
  (`merge_and_unload`), ``"adapter"`` keep the base bitwise unchanged and deploy whatever adapter
  the strategy left in ``ctx.model`` (evaluation uses it).

``state`` (name -> tensor) is saved as `StageFolder.strategy_state` in every finished stage
folder and reloaded (from the last finished stage) on resume, then ``on_resume`` is called.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch
from transformers import TrainerCallback

from slice_trl.utils.registry import strategies
from slice_trl.utils.run_folder import StageFolder
from slice_trl.models.lora import ADAPTER
from slice_trl.configs.settings import FromDict



@dataclass
class StrategyConfig(FromDict):
    """Base of every per-strategy config; ``name`` selects the strategy."""

    name: str = field(default="", metadata={"help": "Continual strategy: one of the registered names "
                                                   "(built in: eblora, inflora, keeplora, olora, slao; a package "
                                                   "of your own adds one through the 'slice_trl.strategies' "
                                                   "entry point group)."})

    # Called as StrategyConfig.from_dict(section): dispatch to the named strategy's config class.
    @classmethod
    def from_dict(cls, data: dict | None):
        data = dict(data or {})
        if cls is not StrategyConfig:
            return super().from_dict(data)
        name = data.get("name")
        if not name:
            raise ValueError(f"strategy needs a 'name': one of {strategies.names()}, e.g. strategy: {{name: olora}}.")
        return strategies.get(name).obj.config_cls.from_dict(data)


def register(cls):
    """Class decorator: register a `Strategy` subclass as ``cls.name`` in
    `slice_trl.utils.registry.strategies`, its class attributes ``defines_init``, ``merge`` and
    ``edits_gradients`` as the entry's traits (what config validation and preflight ask)."""
    return strategies.register(cls.name, defines_init=cls.defines_init, merge=cls.merge,
                               edits_gradients=cls.edits_gradients)(cls)


@dataclass(frozen=True)
class StageContext:
    """What a strategy may use of the continual loop.

    Attributes:
        tasks: the sequence's tasks (`slice_trl.tasks.Task`), in order.
        prepared_train: task index -> that task's tokenized train split (cached by the trainer).
        collate: list of prepared rows -> a batch of tensors (the trainer's data collator).
        attach_adapter: () -> PeftModel: a fresh LoRA adapter on the current model, which becomes
            the trainer's model.
        current_model: () -> the trainer's model as it is now (PeftModel during a stage).
    """

    tasks: Sequence
    prepared_train: Callable
    collate: Callable
    attach_adapter: Callable
    current_model: Callable

    @property
    def model(self):
        return self.current_model()


class Strategy:
    """Base class: every hook is a no-op; ``state`` is saved with every finished stage."""

    name = ""
    config_cls = StrategyConfig
    defines_init = False  # writes A/B itself: the initialiser must be 'vanilla'
    merge = "base"        # "base" or "adapter" (see the module docstring)
    edits_gradients = False  # pre_step changes .grad: impossible under DeepSpeed (see `engine_problem`)

    def __init__(self, config: StrategyConfig):
        self.config = config
        self.state: dict[str, torch.Tensor] = {}
        self.report: dict = {}

    def before_task(self, ctx, t: int, peft_model) -> None:
        pass

    def before_training(self, ctx, t: int) -> None:
        pass

    def pre_step(self, ctx, model) -> None:
        pass

    def post_step(self, ctx, model) -> None:
        pass

    def before_save(self, ctx, t: int) -> None:
        """After training, before the trained adapter is saved: fold any strategy-only parameter
        into lora_A/lora_B, so the saved adapter loads with plain PEFT (EBLoRA's sigma)."""

    def after_task(self, ctx, t: int) -> None:
        pass

    def on_resume(self, ctx, done: int) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").clone().contiguous() for k, v in self.state.items()}  # no shared storage

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = dict(state)

    # What the trainer writes of a strategy: `NoStrategy` answers "nothing" to each.
    def save(self, folder) -> None:
        """Write the strategy's state into a finished stage's folder (`StageFolder.strategy_state`)."""
        save_state(self, folder)

    def restore(self, folder) -> None:
        """Reload ``state`` from the last finished stage's folder (resume)."""
        self.load_state_dict(load_state(folder))

    def record_fields(self) -> dict:
        """Added to every stage record: the strategy's name and its JSON-safe ``report``."""
        import json

        return {"strategy": {"name": self.name, "report": json.loads(json.dumps(self.report, default=str))}}

    def timing_fields(self, seconds: float) -> dict:
        """Added to a stage record's timings: ``seconds`` spent in the per-step hooks."""
        return {"strategy_step_hooks": seconds}


class NoStrategy(Strategy):
    """The strategy of a recipe that names none: every hook does nothing, each stage's adapter is
    merged into the base, and nothing of it is written (no state file, no record or timing
    entry), so a run without a strategy is exactly the plain initialiser + merge loop. Not in
    `slice_trl.utils.registry.strategies`: a recipe selects it by leaving ``strategy`` out."""

    def __init__(self, config: StrategyConfig | None = None):
        super().__init__(config)

    def save(self, folder) -> None:
        pass

    def restore(self, folder) -> None:
        pass

    def record_fields(self) -> dict:
        return {}

    def timing_fields(self, seconds: float) -> dict:
        return {}


def engine_problem(name: str, zero_stage: int | None) -> str | None:
    """Why strategy ``name`` cannot run under DeepSpeed ZeRO ``zero_stage`` (None: no DeepSpeed),
    as one error line with its fix (the strategies that can run there, read off the registry);
    None when it can. The one rule and message, used by the recipe's preflight (before a model
    loads) and by `build_strategy` (the Python API).

    A strategy that edits gradients in ``pre_step`` (O-LoRA's penalty, EBLoRA's Riemannian
    gradient) cannot run under DeepSpeed: accelerate runs DeepSpeed's optimiser step inside
    ``accelerator.backward`` (`DeepSpeedEngineWrapper.backward`), before the Trainer's
    ``on_pre_optimizer_step``, and ZeRO keeps the gradients in its own buffers, so the edit would
    be silently lost."""
    if zero_stage is None or not strategies.get(name).edits_gradients:
        return None
    runnable = ", ".join(e.name for e in strategies.entries() if not e.edits_gradients)
    return (f"strategy.name={name!r} edits the gradients once per optimiser step, but under DeepSpeed "
            f"(ZeRO-{zero_stage}) the optimiser steps inside backward, before that hook, and the edit would be "
            "silently lost; launch it with DDP (accelerate_configs/multi_gpu.yaml) or as one process, or choose "
            f"a strategy that runs under DeepSpeed ({runnable}).")


class StepHooks(TrainerCallback):
    """Calls the strategy's ``pre_step``/``post_step`` exactly once per optimiser step (transformers'
    Trainer fires these events once per ``optimizer.step()``, after gradient accumulation and
    clipping). ``seconds``: time spent in them since it was last reset."""

    def __init__(self, strategy: Strategy, ctx: StageContext):
        self.strategy, self.ctx, self.seconds = strategy, ctx, 0.0

    def _timed(self, hook: str) -> None:
        t0 = time.perf_counter()
        getattr(self.strategy, hook)(self.ctx, self.ctx.model)  # looked up per call: a hook may be replaced
        self.seconds += time.perf_counter() - t0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._timed("pre_step")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._timed("post_step")


def save_state(strategy: Strategy, stage: StageFolder) -> None:
    from safetensors.torch import save_file

    stage.path.mkdir(parents=True, exist_ok=True)
    save_file(strategy.state_dict(), str(stage.strategy_state))


def load_state(stage: StageFolder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = stage.strategy_state
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the stage was finished without the strategy's state. "
                                "Rerun with a new output_dir (or resume=False).")
    return load_file(str(path))


def check_config_fields(cfg) -> None:
    """Shared validation: every float field in [0, 1] whose name starts with eps/rho."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if (f.name.startswith("eps") or f.name == "rho") and not (isinstance(v, (int, float)) and 0 < v <= 1):
            raise ValueError(f"{type(cfg).__name__}.{f.name}={v!r} must be a number in (0, 1].")


@dataclass
class ProbeConfig(StrategyConfig):
    """Fields shared by the strategies that probe each task's gradient and protect an input-side
    subspace (KeepLoRA, EBLoRA)."""

    rho: float = field(default=0.2, metadata={"help": "Fraction of the task's train examples (evenly spaced) "
                                                     "for the gradient probe."})
    batch_size: int = field(default=8, metadata={"help": "Examples per probe mini-batch."})
    micro_batch_size: int = field(default=4, metadata={"help": "Examples per probe forward/backward."})
    cap: int | None = field(default=None, metadata={"help": "Max columns k of the protected subspace per module; "
                                                           "null = d_in - r (always leaves r free directions)."})

    def __post_init__(self):
        check_config_fields(self)
        cls = type(self).__name__
        for name in ("batch_size", "micro_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{cls}.{name}={getattr(self, name)!r} must be >= 1.")
        if self.cap is not None and int(self.cap) < 0:
            raise ValueError(f"{cls}.cap={self.cap!r} must be >= 0 or null.")

    def cap_for(self, layer) -> int:
        """The column cap of one LoRA layer's subspace: ``cap`` or d_in - r."""
        return layer.in_features - layer.r[ADAPTER] if self.cap is None else int(self.cap)


def probe_batches(ctx, t: int, rho: float, batch_size: int) -> list[dict]:
    """Collated batches of a fraction ``rho`` of task t's prepared train split (evenly spaced
    examples, the same subset every time it is asked for)."""
    ds = ctx.prepared_train(t)
    n = max(1, min(len(ds), round(rho * len(ds))))
    idx = [int(i * len(ds) / n) for i in range(n)]
    keep = [c for c in ("input_ids", "labels", "completion_mask") if c in ds.column_names]
    rows = ds.select(idx).select_columns(keep)
    return [ctx.collate([rows[j] for j in range(i, min(i + batch_size, n))])
            for i in range(0, n, batch_size)]


def task_gradient(ctx, t: int, peft_model, rho: float, batch_size: int, micro_batch_size: int | None):
    """THE gradient probe (`estimate_mean_gradients`) on a fraction ``rho`` of task t's prepared
    train split (evenly spaced examples), at the model's current effective weights: on a
    PeftModel the gradient w.r.t. the frozen base weight equals dL/dW at W + s B A.
    Returns {canonical module name: G (d_out, d_in), fp32}."""
    from slice_trl.kernels.gradients import check_finite
    from slice_trl.models.gradients import estimate_mean_gradients, target_weights

    batches = probe_batches(ctx, t, rho, batch_size)
    weights = target_weights(peft_model, adapter_name=ADAPTER)
    grads, _ = estimate_mean_gradients(peft_model, batches, weights, micro_batch_size)
    check_finite(grads, f"{ctx.tasks[t].name} (strategy probe)")
    return grads
