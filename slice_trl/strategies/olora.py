"""O-LoRA (Wang et al., 2023): keep earlier tasks' A_j; penalise lambda1 * sum_j |A_t A_j^T|_1.

The penalty is added as a GRADIENT once per optimiser step (``pre_step``), not to the loss in
``compute_loss`` (which gradient accumulation may count GA times). Composes with every
initialiser: it only reads and penalises A."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slice_trl.models.lora import ADAPTER, lora_layers
from slice_trl.strategies.base import Strategy, StrategyConfig, register


@dataclass
class OLoRAConfig(StrategyConfig):
    """O-LoRA settings."""

    name: str = field(default="olora", metadata={"help": "'olora'."})
    lambda1: float = field(default=0.5, metadata={"help": "Weight of the orthogonality penalty sum_j |A_t A_j^T|_1."})
    lambda2: float = field(default=0.0, metadata={"help": "Weight of the L2 penalty ||A_t||^2 + ||B_t||^2."})

    def __post_init__(self):
        for name in ("lambda1", "lambda2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"OLoRAConfig.{name}={v!r} must be a number >= 0.")


def penalty(a: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """sum |A A_prev^T| (entrywise L1); A (r, d_in), A_prev (sum r_j, d_in)."""
    return (a.float() @ a_prev.float().T).abs().sum()


def penalty_grad(a: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """d penalty / dA = sign(A A_prev^T) A_prev (sign(0) = 0, as autograd's abs)."""
    a_prev = a_prev.float()
    return torch.sign(a.float() @ a_prev.T) @ a_prev


@register
class OLoRA(Strategy):
    name = "olora"
    config_cls = OLoRAConfig
    merge = "base"
    edits_gradients = True

    def before_task(self, ctx, t, peft_model):
        self._layers = lora_layers(peft_model, ADAPTER)
        self.report = {"stored_rows": {n: int(self.state[n].shape[0]) for n in self.state}, "steps": 0}

    @torch.no_grad()
    def pre_step(self, ctx, model):
        cfg = self.config
        for name, layer in self._layers.items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            if a.grad is not None and cfg.lambda1 and name in self.state:
                a.grad.add_((cfg.lambda1 * penalty_grad(a, self.state[name].to(a.device))).to(a.grad.dtype))
            if cfg.lambda2:
                for p in (a, b):
                    if p.grad is not None:
                        p.grad.add_(2 * cfg.lambda2 * p.detach())
        self.report["steps"] += 1

    @torch.no_grad()
    def after_task(self, ctx, t):
        for name, layer in lora_layers(ctx.model, ADAPTER).items():
            a = layer.lora_A[ADAPTER].weight.detach().float().cpu()
            self.state[name] = torch.cat([self.state[name], a]) if name in self.state else a.clone()
