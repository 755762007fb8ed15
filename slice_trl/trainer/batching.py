"""Turning task examples into the collated mini-batches the gradient probe reads.

The trainer tokenises with its own `SFTTrainer._prepare_dataset` and `data_collator`; code
without a trainer (sequence mining, benchmarks) uses `prepare_sft_dataset`, which runs the same
TRL tokenisation, so every gradient in the package is of the loss SFTTrainer trains with.
"""

from __future__ import annotations

import torch
from datasets import Dataset


def prepare_sft_dataset(dataset: Dataset, tokenizer, max_length: int | None = 256,
                        completion_only_loss: bool | None = None) -> Dataset:
    """TRL's SFT tokenisation (chat template, completion-only labels, truncation) outside a
    trainer. Returns a dataset with ``input_ids`` and, for prompt/completion data, labels masked
    to the completion."""
    from trl import SFTConfig

    from slice_trl.trainer.trl_private import prepare_dataset_without_trainer

    args = SFTConfig(output_dir="unused", max_length=max_length, completion_only_loss=completion_only_loss,
                     bf16=False, report_to=[], dataset_num_proc=None)
    sample = dataset[0]
    completion_only = (completion_only_loss if completion_only_loss is not None
                       else "prompt" in sample and "completion" in sample)
    return prepare_dataset_without_trainer(dataset, tokenizer, args, completion_only)


def default_collator(tokenizer):
    """The collator SFTTrainer builds for text data (right padding, labels padded with -100)."""
    from slice_trl.trainer.trl_private import sft_collator_cls

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return sft_collator_cls()(pad_token_id=pad)


def sample_batches(prepared: Dataset, collator, batch_size: int, n_batches: int, seed: int) -> list[dict]:
    """``n_batches`` collated mini-batches of ``batch_size`` examples drawn without replacement
    (cycling through a fresh permutation when the dataset is smaller), seeded.

    Each batch: {"input_ids": (b, T), "attention_mask": (b, T), "labels": (b, T)}.
    """
    n = len(prepared)
    if n == 0:
        raise ValueError("Cannot draw gradient-estimation batches from an empty dataset.")
    gen = torch.Generator().manual_seed(seed)
    need = batch_size * n_batches
    order: list[int] = []
    while len(order) < need:
        order.extend(torch.randperm(n, generator=gen).tolist())
    keep = [c for c in ("input_ids", "labels", "completion_mask") if c in prepared.column_names]
    rows = prepared.select_columns(keep)
    batches = []
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        examples = [rows[i] for i in idx]
        batches.append(collator(examples))
    return batches
