"""Process-group helpers. Every multi-process decision of the package goes through here.

Single-process runs (no initialised torch.distributed group) make every helper a no-op, so the
library code is written once for both cases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, MutableMapping

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensors: MutableMapping[str, torch.Tensor]) -> None:
    """In-place sum over ranks, in sorted-name order so every rank issues the same collectives.
    bf16 stores are reduced in fp32 to avoid summing in low precision."""
    if not is_distributed():
        return
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype in (torch.float16, torch.bfloat16):
            t32 = t.float()
            dist.all_reduce(t32)
            t.copy_(t32)
        else:
            dist.all_reduce(t)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """In-place broadcast from ``src`` (used to make every rank hold the owner's A and B)."""
    if not is_distributed():
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def launched_zero_stage(deepspeed_config=None) -> int | None:
    """The DeepSpeed ZeRO stage a run will use, known before any model loads: from a DeepSpeed
    config (the recipe's ``deepspeed``: a JSON file or a mapping) or from what ``accelerate
    launch`` put in the environment (``ACCELERATE_USE_DEEPSPEED`` with
    ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, or the file named by ``ACCELERATE_DEEPSPEED_CONFIG_FILE``).
    None without DeepSpeed; 0 for DeepSpeed without ZeRO."""
    import json
    import os

    def stage_of(config) -> int:
        if isinstance(config, str):
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        return int((config.get("zero_optimization") or {}).get("stage", 0))

    if deepspeed_config:
        return stage_of(deepspeed_config)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").lower() not in ("", "none"):
        return stage_of(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))  # accelerate's own default stage


def zero3_enabled() -> bool:
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - old transformers
        return False
    return bool(is_deepspeed_zero3_enabled())


@contextlib.contextmanager
def gathered(params: Iterable[torch.nn.Parameter], modifier_rank: int | None = 0):
    """Under DeepSpeed ZeRO-3, gather partitioned parameters for the duration (writes on
    ``modifier_rank`` are re-partitioned on exit); a no-op otherwise. Used module by module to
    bound memory."""
    params = [p for p in params if p is not None]
    if zero3_enabled() and any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield
