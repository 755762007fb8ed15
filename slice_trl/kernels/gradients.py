"""The tensor arithmetic of the gradient probe (`slice_trl.models.gradients`), torch only.

The loss of one mini-batch is the token mean over its label tokens (labels != -100 after the
causal shift), the loss SFTTrainer trains with; these functions count those tokens, cut a batch
into micro-batches, sum the cross-entropy over the label tokens and check the resulting
gradients. A batch is a mapping {"input_ids": (b, T), "attention_mask": (b, T), "labels": (b, T)},
"labels" and "attention_mask" optional.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def labels_of(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The batch's labels (b, T); without a "labels" entry, the input ids with the padding
    (attention_mask == 0) set to -100: every real token is a label."""
    if "labels" in batch:
        return batch["labels"]
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return labels


def label_token_count(labels: torch.Tensor) -> int:
    """Tokens that are predicted and scored: labels (b, T) != -100 after the causal shift (from position 1)."""
    return int((labels[..., 1:] != -100).sum())


def micro_batches(batch: Mapping[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """The batch's tensors cut along the example dimension into pieces of ``size`` examples (the
    last one shorter); entries that are not tensors are dropped."""
    n = batch["input_ids"].size(0)
    return [{k: v[i:i + size] for k, v in batch.items() if torch.is_tensor(v)} for i in range(0, n, size)]


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the targets != -100 of the cross-entropy, in fp32. Scalar.

    Args:
        logits: (b, K, V), position k predicting ``targets[:, k]``.
        targets: (b, K) token ids, -100 where not scored.
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum",
    )


def check_finite(grads: Mapping[str, torch.Tensor], label: str) -> None:
    """Raise naming the first module whose gradient (any shape) has NaN or inf."""
    for name, g in grads.items():
        if not torch.isfinite(g).all():
            raise FloatingPointError(
                f"The {label} gradient of module {name!r} contains NaN or inf. Lower the learning rate of the "
                "previous stage, use float32, or check the data of this task for empty/degenerate examples."
            )
