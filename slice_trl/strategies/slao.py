"""Merge before Forget, "SLAO" (Qiao and Mahdavi, 2025): one LoRA for the whole sequence, merged
in ADAPTER space; the base W0 is never changed. The deployed model is W0 + s B_mg A_mg.

State (constant size): per module A_mg, B_mg (the merged adapter) and A_prev, B_prev (the last
task's trained factors), plus the task count."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from slice_trl.utils import distributed
from slice_trl.models.lora import ADAPTER, lora_layers
from slice_trl.strategies.base import Strategy, StrategyConfig, register


@dataclass
class SLAOConfig(StrategyConfig):
    """SLAO settings (the merge weight is lambda(i) = 1/sqrt(i), i 1-indexed)."""

    name: str = field(default="slao", metadata={"help": "'slao'."})


def merge_coefficients(n_tasks: int) -> list[float]:
    """Weights c_1..c_T with B_mg = sum_j c_j B_j after T tasks (they sum to 1)."""
    c: list[float] = []
    for i in range(1, n_tasks + 1):
        lam = 1.0 / math.sqrt(i)
        c = [x * (1 - lam) for x in c] + [lam]
    return c


def orthonormal_like(a_prev: torch.Tensor) -> torch.Tensor:
    """Q^T from the QR of A_prev^T with diag(R) >= 0: orthonormal rows, the row space of A_prev."""
    q, r = torch.linalg.qr(a_prev.float().T)
    d = torch.sign(torch.diagonal(r))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return (q * d).T.contiguous()


@register
class SLAO(Strategy):
    name = "slao"
    config_cls = SLAOConfig
    defines_init = True
    merge = "adapter"

    @torch.no_grad()
    def before_task(self, ctx, t, peft_model):
        self.report = {"merge_coefficients": merge_coefficients(t + 1)}
        if t == 0:
            return  # task 1: the vanilla init
        for name, layer in lora_layers(peft_model, ADAPTER).items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            # written directly (no absorption): the base stays W0, bitwise
            a.copy_(orthonormal_like(self.state[f"{name}.A_prev"]).to(a))
            b.copy_(self.state[f"{name}.B_prev"].to(b))

    @torch.no_grad()
    def after_task(self, ctx, t):
        i = t + 1
        lam = 1.0 / math.sqrt(i)
        for name, layer in lora_layers(ctx.model, ADAPTER).items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            with distributed.gathered([a, b], modifier_rank=0):  # ZeRO-3: the trained A, B are partitioned
                a_i, b_i = a.detach().float().cpu().clone(), b.detach().float().cpu().clone()
                b_mg = b_i if t == 0 else self.state[f"{name}.B_mg"] + lam * (b_i - self.state[f"{name}.B_mg"])
                self.state.update({f"{name}.A_mg": a_i, f"{name}.B_mg": b_mg,
                                   f"{name}.A_prev": a_i, f"{name}.B_prev": b_i})
                a.copy_(a_i.to(a))
                b.copy_(b_mg.to(b))
        self.state["tasks_done"] = torch.tensor([i])

    def on_resume(self, ctx, done):
        """Rebuild the deployed model W0 + s B_mg A_mg."""
        peft_model = ctx.attach_adapter()
        with torch.no_grad():
            for name, layer in lora_layers(peft_model, ADAPTER).items():
                layer.lora_A[ADAPTER].weight.copy_(self.state[f"{name}.A_mg"])
                layer.lora_B[ADAPTER].weight.copy_(self.state[f"{name}.B_mg"])
