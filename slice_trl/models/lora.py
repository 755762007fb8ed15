"""LoRA primitives on PEFT models, shared by initialisers, strategies, stages and the trainer:
the adapter name, the target LoRA layers, writing an adapter while absorbing it into the base,
the rank check, and a scope that puts a model in eval mode and restores every module's mode."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import nn

from slice_trl.utils import distributed
from slice_trl.models.gradients import canonical_name

ADAPTER = "default"  # the one adapter name of the continual loop (PEFT's default)


def lora_layers(model: nn.Module, adapter_name: str = ADAPTER) -> dict[str, nn.Module]:
    """Canonical name -> LoRA layer holding ``adapter_name``; error if none."""
    from peft.tuners.lora import LoraLayer

    layers = {canonical_name(n): m for n, m in model.named_modules()
              if isinstance(m, LoraLayer) and adapter_name in m.lora_A}
    if not layers:
        raise ValueError(f"No LoRA layer holds adapter {adapter_name!r}: no target module matched. "
                         "Check LoraConfig.target_modules against the model's linear layer names.")
    return layers


def _delta(layer, b: torch.Tensor, a: torch.Tensor, scaling: float) -> torch.Tensor:
    """s * B A in the base weight's layout (transposed for fan_in_fan_out layers). fp32."""
    d = scaling * (b.float() @ a.float())
    return d.T if getattr(layer, "fan_in_fan_out", False) else d


@torch.no_grad()
def write_and_absorb(layer, adapter_name: str, a0: torch.Tensor, b0: torch.Tensor) -> None:
    """Write A0 (r, d_in), B0 (d_out, r) into the adapter and absorb them into the base:

        W_base <- W_base + s * (B_old A_old - B0 A0)

    so the effective weight W_base + s B A is unchanged. The product is taken in fp32 and
    rounded once into the base dtype.
    """
    base = layer.get_base_layer()
    lora_a, lora_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    s = layer.scaling[adapter_name]
    with distributed.gathered([base.weight, lora_a, lora_b], modifier_rank=0):
        change = _delta(layer, lora_b, lora_a, s) - _delta(layer, b0, a0, s)
        base.weight.data.copy_((base.weight.data.float() + change).to(base.weight.dtype))
        lora_a.data.copy_(a0.to(lora_a.dtype))
        lora_b.data.copy_(b0.to(lora_b.dtype))


def check_rank(layers: Mapping[str, nn.Module], adapter_name: str, needs_2r: bool) -> None:
    """Raise before any work if a layer is too small for the rank (2r singular vectors are needed
    by gradient slicing, r by LoRAM)."""
    for name, layer in layers.items():
        r = layer.r[adapter_name]
        d_out, d_in = layer.out_features, layer.in_features
        need = 2 * r if needs_2r else r
        if need > min(d_out, d_in):
            raise ValueError(
                f"LoraConfig.r={r} is too large for module {name!r} ({d_out}x{d_in}): this init needs "
                f"{'2r' if needs_2r else 'r'}={need} <= {min(d_out, d_in)}. Lower r to at most "
                f"{min(d_out, d_in) // (2 if needs_2r else 1)} or exclude the module from target_modules."
            )


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` for the scope, then every module's own ``training`` flag as it was (a
    caller such as lm-eval's HFLM may call ``eval()`` again inside)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode
