"""Every use of TRL's or transformers' private (underscored or undocumented) API, in one place.

The continual loop reuses SFTTrainer's own tokenisation and swaps the model the Trainer trains
between stages; neither has a public hook in TRL. Each wrapper names what it touches and the
versions it was checked against: **trl 1.16.0, transformers 5.24.0, peft 0.21.2**. After an
upgrade, check each one here (tests/test_trainer.py exercises all of them).

Not wrapped here: `slice_trl.trainer.tracking` reads
``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK`` (report_to name ->
callback class; transformers 5.24.0) and moves the integration callbacks of
``Trainer.callback_handler`` into one sequence-long callback.
"""

from __future__ import annotations

from types import SimpleNamespace

CHECKED_AGAINST = {"trl": "1.16.0", "transformers": "5.24.0", "peft": "0.21.2"}


def prepare_dataset(trainer, dataset, name: str):
    """SFTTrainer's own tokenisation of ``dataset`` (chat template, completion-only labels,
    truncation to ``max_length``), as it prepares ``train_dataset``.

    Private: ``SFTTrainer._prepare_dataset(dataset, processing_class, args, packing,
    formatting_func, dataset_name)`` (trl 1.16.0); TRL prepares only the datasets given to
    ``__init__``, the loop prepares one per task."""
    return trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, trainer.args.packing, None, name)


def prepare_dataset_without_trainer(dataset, tokenizer, args, completion_only: bool):
    """The same tokenisation with no trainer (sequence mining, benchmarks).

    Private: ``SFTTrainer._prepare_dataset`` called unbound; in trl 1.16.0 it reads exactly
    three attributes of ``self`` (``_tokenizer``, ``chat_template``, ``completion_only_loss``),
    given here by a namespace."""
    from trl import SFTTrainer

    shim = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=completion_only)
    return SFTTrainer._prepare_dataset(shim, dataset, tokenizer, args, False, None, "probe")


def sft_collator_cls():
    """The collator class SFTTrainer builds for text data.

    Private: ``trl.trainer.sft_trainer.DataCollatorForLanguageModeling`` is not exported by
    ``trl`` (trl 1.16.0)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling


def use_model(trainer, model):
    """Make ``model`` the one the Trainer trains, saves and evaluates from now on; returns it.

    Private: ``Trainer.model_wrapped`` (transformers 5.24.0) is the model the training loop
    wraps; it must follow ``Trainer.model`` or ``train()`` would wrap the previous stage's."""
    trainer.model = trainer.model_wrapped = model
    return model


def reset_optimizer(trainer) -> None:
    """A fresh optimizer and scheduler for the next ``train()``.

    Private: transformers 5.24.0 creates them in ``train()`` only while ``Trainer.optimizer`` /
    ``Trainer.lr_scheduler`` are None; otherwise the previous adapter's would be reused."""
    trainer.optimizer, trainer.lr_scheduler = None, None


def zero_stage(trainer) -> int | None:
    """The DeepSpeed ZeRO stage the trainer runs under (None: no DeepSpeed).

    Private: ``Trainer.is_deepspeed_enabled`` and ``accelerator.state.deepspeed_plugin``
    (transformers 5.24.0) are undocumented attributes."""
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return plugin and plugin.zero_stage


def no_zero3_init():
    """A context in which ``from_config`` builds a model normally even under a ZeRO-3 launch (the
    preflight's empty-weights model; ZeRO-3 would build it inside ``deepspeed.zero.Init``).

    Private: ``transformers.modeling_utils.set_zero3_state`` (transformers 5.24.0); a no-op
    context where it does not exist."""
    try:
        from transformers.modeling_utils import set_zero3_state
    except ImportError:  # pragma: no cover - other transformers versions
        from contextlib import nullcontext as set_zero3_state
    return set_zero3_state()


def commit_hash(model) -> str | None:
    """The Hub commit a model was loaded from (None for a local or in-memory model).

    Private: ``PretrainedConfig._commit_hash`` (transformers 5.24.0)."""
    return getattr(model.config, "_commit_hash", None)
