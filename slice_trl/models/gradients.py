"""The one gradient probe: mean full-weight gradients dL/dW of the target linear layers of a model.

Used by SLICE and LoRA-GA (stage 1 of docs/method.md), by the strategies that need a task gradient
(KeepLoRA, EBLoRA) and by sequence mining. ``G[name]`` has the shape of the layer's weight,
``(d_out, d_in)``, and is accumulated in fp32.

The loss of one mini-batch is the token mean over its label tokens (labels != -100 after the
causal shift), the loss SFTTrainer trains with. Micro-batches are summed with the *batch's*
token count as the denominator, so the result does not depend on the micro-batch size. The mean
over S mini-batches gives every mini-batch equal weight (docs/method.md: "each earlier task weighs
equally").

The arithmetic on tensors (label counts, micro-batches, the summed cross-entropy, the finiteness
check) lives in `slice_trl.kernels.gradients`; this module owns what knows the model: PEFT's LoRA
layers and names, the modes and flags set for the duration of the passes, the distributed sharding
and the host allocator policy (`slice_trl.utils.allocator`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from slice_trl.kernels.gradients import label_token_count, labels_of, micro_batches, summed_cross_entropy
from slice_trl.utils import distributed
from slice_trl.utils.allocator import host_memory_returned_to_os

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PEFT_PREFIX = "base_model.model."
_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def canonical_name(module_name: str) -> str:
    """Strip PEFT's wrapper prefix so plain and PEFT-wrapped models share module names."""
    return module_name[len(_PEFT_PREFIX):] if module_name.startswith(_PEFT_PREFIX) else module_name


def target_weights(model: nn.Module, target_modules: Iterable[str] | None = None, adapter_name: str | None = None
                   ) -> dict[str, nn.Parameter]:
    """Weights of the target linear layers, keyed by canonical module name.

    On a PEFT model, the targets are the LoRA layers that hold ``adapter_name`` (any adapter if
    None) and the weight is the frozen ``base_layer.weight``. On a plain model, the targets are
    ``nn.Linear`` modules whose last name component is in ``target_modules`` (default: the seven
    Llama projections).
    """
    from peft.tuners.lora import LoraLayer

    lora_layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    found: dict[str, nn.Parameter] = {}
    if lora_layers:
        for name, layer in lora_layers.items():
            if adapter_name is not None and adapter_name not in layer.lora_A:
                continue
            if target_modules is not None and name.rsplit(".", 1)[-1] not in set(target_modules):
                continue
            found[canonical_name(name)] = layer.get_base_layer().weight
    else:
        targets = set(target_modules or DEFAULT_TARGETS)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                found[canonical_name(name)] = module.weight
    if not found:
        raise ValueError(
            f"No target module matched (target_modules={sorted(target_modules) if target_modules else None}, "
            f"adapter={adapter_name!r}). Set LoraConfig.target_modules to names of linear layers in the model, "
            f"e.g. {list(DEFAULT_TARGETS)} for Llama."
        )
    return found


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (PEFT-unwrapped) model's forward takes ``logits_to_keep`` (transformers' causal
    LMs do; an index tensor selects sequence positions)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def summed_token_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum over label tokens of the next-token cross-entropy (fp32). Scalar.

    Position t's logits predict token t + 1. Only positions whose next token is a label anywhere
    in the batch get logits (``logits_to_keep``, where the model supports it): with completion-only
    labels that skips the LM head - (b, T, vocab) logits, their log-softmax and their gradients -
    for the prompt, which is most of the sequence. The sum is the same."""
    inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
    targets = labels_of(batch)[:, 1:]  # targets[:, t] is predicted at position t
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    if 0 < keep.numel() < targets.size(1) and _accepts_logits_to_keep(model):
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (b, K, V)
        targets = targets[:, keep]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1]  # (b, T - 1, V)
    return summed_cross_entropy(logits, targets)


@contextlib.contextmanager
def _only_targets_require_grad(model: nn.Module, weights: Mapping[str, nn.Parameter]):
    """Only the target weights require grad for the duration. Their existing ``.grad`` (e.g. from
    a user's own backward) is set aside, so it neither leaks into the estimate nor is lost; every
    flag and gradient is restored on exit."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for w in weights.values():  # a target outside model.parameters() is restored too
        flags.setdefault(w, w.requires_grad)
    saved_grads = {w: w.grad for w in weights.values()}
    try:
        for p in flags:
            p.requires_grad_(False)
        for w in weights.values():
            w.grad = None
            w.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for w, g in saved_grads.items():
            w.grad = g


def _toggle_checkpointing(model: nn.Module, enable: bool) -> None:
    # transformers >= 5 names it activation checkpointing (the gradient_* names warn); older: gradient_*
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


@contextlib.contextmanager
def _estimation_mode(model: nn.Module, gradient_checkpointing: bool):
    """Eval mode (no dropout: the estimate is deterministic). HF checkpointing only acts on a
    checkpointed layer in train mode, so with it exactly those layers (the modules carrying
    ``gradient_checkpointing = True``) are switched to train mode; their submodules (attention,
    dropout, LoRA dropout) stay in eval mode. Every module's mode is restored on exit."""
    modes = {m: m.training for m in model.modules()}  # per module: a mixed train/eval state survives
    had_gc = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if had_gc is None:
        had_gc = bool(getattr(model, "is_gradient_checkpointing", False))
    try:
        model.eval()
        if gradient_checkpointing:
            if not had_gc:
                _toggle_checkpointing(model, True)
            for m in model.modules():
                if getattr(m, "gradient_checkpointing", False) is True:
                    m.training = True
        yield
    finally:
        if gradient_checkpointing and not had_gc:
            _toggle_checkpointing(model, False)
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _embedding_output_requires_grad(model: nn.Module, enable: bool):
    """Under ZeRO-3, DeepSpeed releases a module's gathered weights in a backward hook that autograd
    runs only when the module's input requires grad. With the embedding frozen, nothing before
    the first target weight does, so those weights would stay gathered after the estimate (and
    the next GatheredParameters fails: "still active in submodules"). For the duration, the input
    embeddings' output requires grad (what PEFT's ``enable_input_require_grads`` does); the
    gradients of the target weights are unchanged."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if enable and get is not None else None
    if embeddings is None:
        yield
        return
    handle = embeddings.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def estimate_mean_gradients(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    weights: Mapping[str, nn.Parameter],
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    store_dtype: torch.dtype = torch.float32,
    store_device: torch.device | str | None = None,
    shard_across_processes: bool = True,
    progress: str | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Mean over mini-batches of dL/dW for each weight in ``weights``.

    Args:
        batches: collated mini-batches ({"input_ids": (b, T), "attention_mask": (b, T),
            "labels": (b, T) with -100 on ignored tokens}). All mini-batches weigh equally.
        micro_batch_size: examples per forward/backward (None = whole mini-batch).
        store_dtype / store_device: where the returned mean lives. Accumulation is always in fp32
            on the weights' device (docs/method.md: "Accumulate in fp32"); the mean is cast/moved to
            the store at the end, module by module, so a bf16 store costs no precision in the
            sum and no extra peak memory (the fp32 sum exists only while nothing else is held).
        shard_across_processes: under torch.distributed, rank k handles mini-batches
            k, k + world, ... and the sums are all-reduced, so every rank returns the same mean
            as one process over all mini-batches (the global batch). False: every rank
            computes the mean over all mini-batches alone (no collective at all).

    Under DeepSpeed ZeRO-3 the target weights are partitioned; DeepSpeed's module hooks gather
    each layer's weights for its forward and backward, so autograd still delivers the FULL
    gradient dL/dW (checked with DeepSpeed 0.19 on CPU/gloo), and the sums here have the full
    shape (``ds_shape``) on every rank: one full fp32 set per rank, as without ZeRO-3. Those
    gathers are collective, so every rank runs the same number of forward/backward passes
    (passes with nothing to contribute run with weight 0; see ``lockstep`` below).

    Returns:
        (G, n_batches): G[name] of shape (d_out, d_in); n_batches = mini-batches averaged.
    """
    from tqdm.auto import tqdm

    from slice_trl.utils.console import bars_enabled

    rank, world = distributed.rank_and_world() if shard_across_processes else (0, 1)
    name_of = {id(w): n for n, w in weights.items()}

    def make_hook(name: str):
        def hook(param: torch.Tensor) -> None:
            # Fold the gradient into the store as soon as autograd finishes it, then free it:
            # peak memory holds one fresh gradient per layer in flight, not a full second copy.
            g = param.grad
            if name not in acc:
                acc[name] = torch.zeros(g.shape, dtype=torch.float32, device=g.device)
            acc[name].add_(g)
            param.grad = None
        return hook

    # The fp32 sums are allocated up front, before any activation exists: long-lived buffers
    # allocated between short-lived activations fragment the host allocator's heap (a higher
    # peak RSS on CPU for the same live memory). ZeRO-3-partitioned weights (no real shape
    # here) get theirs from the first gradient instead.
    acc: dict[str, torch.Tensor] = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device)
                                    for n, w in weights.items() if not hasattr(w, "ds_id")}

    # ZeRO-3 gathers the partitioned weights collectively at every forward and backward: a rank
    # must not skip a pass or run fewer passes than another (it would hang). Such passes run
    # with weight 0 instead.
    lockstep = world > 1 and distributed.zero3_enabled()
    passes = target = 0
    if lockstep:  # every rank sees every batch: the busiest rank's pass count is known locally
        batches = list(batches)
        per_rank = [0] * world
        for i, batch in enumerate(batches):
            n = batch["input_ids"].size(0)
            per_rank[i % world] += -(-n // (micro_batch_size or n))
        target = max(per_rank)
    n_batches = 0
    on_cpu = next(iter(weights.values())).device.type == "cpu"
    with _only_targets_require_grad(model, weights), _estimation_mode(model, gradient_checkpointing), \
            _embedding_output_requires_grad(model, distributed.zero3_enabled()), host_memory_returned_to_os(on_cpu):
        handles = [w.register_post_accumulate_grad_hook(make_hook(name_of[id(w)])) for w in weights.values()]
        try:
            device = next(iter(weights.values())).device
            for i, batch in enumerate(tqdm(batches, desc=progress, disable=progress is None or rank != 0 or not bars_enabled())):
                n_batches += 1
                if i % world != rank:
                    continue
                batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
                n_tokens = label_token_count(labels_of(batch))
                if n_tokens == 0:
                    logger.warning("A gradient-estimation batch has no label tokens; it contributes zero.")
                    if not lockstep:
                        continue
                for micro in micro_batches(batch, micro_batch_size or batch["input_ids"].size(0)):
                    if label_token_count(labels_of(micro)) == 0 and not lockstep:
                        continue  # contributes exactly zero: skip the pass
                    loss = summed_token_loss(model, micro) / max(n_tokens, 1)
                    loss.backward()
                    del loss
                    passes += 1
            if passes < target:  # lockstep: top up to the busiest rank's pass count, weight 0
                filler = {k: v.to(device) for k, v in batches[0].items() if torch.is_tensor(v)}
                filler = micro_batches(filler, micro_batch_size or filler["input_ids"].size(0))[0]
                for _ in range(target - passes):
                    (summed_token_loss(model, filler) * 0.0).backward()
        finally:
            for h in handles:
                h.remove()
    if n_batches == 0:
        raise ValueError("Gradient estimation got no mini-batches; the task's train split is empty or too small.")
    for name, w in weights.items():
        if name not in acc:  # no batch on this rank reached it (or no label tokens at all)
            shape = getattr(w, "ds_shape", w.shape)  # ZeRO-3: the full shape, not the local partition
            acc[name] = torch.zeros(shape, dtype=torch.float32, device=w.device)
    if shard_across_processes:  # unsharded: every rank summed all mini-batches itself
        distributed.all_reduce_sum(acc)  # fp32, on the weights' device (NCCL cannot reduce CPU tensors)
    result: dict[str, torch.Tensor] = {}
    for name in weights:  # the weights' order; one module at a time bounds the cast's extra memory
        g = acc.pop(name).div_(n_batches)
        result[name] = g.to(device=store_device or g.device, dtype=store_dtype)
        del g
    return result, n_batches
